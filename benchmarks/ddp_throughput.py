"""Training throughput against the number of torchrun processes (DDP, gloo on CPU).

The same run (acac train_300K, fixed global batch, fixed epochs) with 1 process and with
``torchrun --nproc_per_node N`` (one torch thread per process), and one process with N
threads for comparison; throughput = training frames per second over the epochs after the
first (from log.csv's minutes column).

    python benchmarks/ddp_throughput.py [--processes 1 2] [--model bpnn] [--epochs 6]
        [--device cuda] [--data examples/acac] [--threads 1] [--torchrun-single]

``--device cuda`` trains on the GPU (NCCL between processes, one GPU per process);
``--torchrun-single`` also runs one process under torchrun (the distributed path with a
world of one: it must give the plain run's losses); ``--threads`` is the thread count of the
one-process runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

import common

DATA = common.SHARED_DATA / "acac"
OUT = common.OUT / "ddp_throughput"


def run(name: str, processes: int, threads: int, args, torchrun: bool = False) -> dict:
    torchrun = torchrun or processes > 1
    out = OUT / name
    config = OUT / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "data": {"train": str(args.data / "train_300K.xyz"), "max_train": args.frames,
                 "isolated_atoms": str(args.data / "isolated_atoms.xyz")},
        "model": {"kind": args.model, "size": "medium"},
        "training": {"max_epochs": args.epochs, "max_minutes": None, "threads": threads,
                     "batch_size": args.batch, "cache_descriptors": False,
                     "device": args.device},
        "out": str(out)}))
    command = [sys.executable, "-m", "mlpot", "train", str(config)]
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "mlpot", "train", str(config)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    minutes = float(rows[-1]["minutes"]) - float(rows[0]["minutes"])
    frames = args.frames * (len(rows) - 1)
    return {"processes": processes, "threads_per_process": threads, "device": args.device,
            "torchrun": torchrun,
            "frames_per_second": frames / (minutes * 60),
            "final_valid_loss": float(rows[-1]["valid_loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="bpnn")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train_300K.xyz "
                        "and isolated_atoms.xyz (the acac set; examples/acac holds it too)")
    parser.add_argument("--threads", type=int, default=1, help="threads of one-process runs")
    parser.add_argument("--torchrun-single", action="store_true")
    args = parser.parse_args()
    args.data = args.data.resolve()  # the config's paths are read relative to it
    results = []
    for n in args.processes:
        results.append(run(f"{args.model}_ddp{n}", n, args.threads if n == 1 else 1, args))
        if n == 1 and args.torchrun_single:
            results.append(run(f"{args.model}_torchrun1", 1, args.threads, args, torchrun=True))
        if n > 1:
            results.append(run(f"{args.model}_threads{n}", 1, n, args))
    for row in results:
        print(f"{row['processes']} process(es) × {row['threads_per_process']} thread(s) on "
              f"{row['device']}{' (torchrun)' if row['torchrun'] else ''}: "
              f"{row['frames_per_second']:7.1f} frames/s  (valid loss {row['final_valid_loss']:.2f})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
