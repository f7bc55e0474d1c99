"""Cost per atom per MD step and peak memory against system size (water boxes).

Each size runs in its own subprocess (so its peak resident memory is its own): a periodic
water box of side³ molecules at 1 g/cm³, an untrained bpnn (cost does not depend on the
weights), the ASE calculator with the skin neighbour list, energy + forces per step on
slightly moved positions (as in MD), median of ``--repeats`` steps after one warm-up.

    python benchmarks/scaling.py [--sides 2 3 5 8 12 17] [--angular-cutoff 3.5]
        [--dtype float32] [--device cuda] [--out benchmarks/results/scaling.json] [--label TEXT]
    python benchmarks/scaling.py --plot docs/scaling_water.png RESULT.json [RESULT.json ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import write_json


def one_size(side: int, size: str, angular_cutoff: float | None, dtype: str, repeats: int,
             threads: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from long_range_cost import water_box

    from mlpot.config import config_from_dict
    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.train.run import build_potential

    torch.set_num_threads(threads)
    atoms = water_box(side)
    model = {"kind": "bpnn", "size": size}
    if angular_cutoff:
        model["angular_cutoff"] = angular_cutoff
    config = config_from_dict({"data": {"train": "unused.xyz"}, "model": model})
    potential = build_potential(config, [1, 8], {"H": 0.0, "O": 0.0}).eval()
    atoms.calc = MlpotCalculator(potential, dtype=dtype, device=device)
    atoms.get_forces()
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(repeats):
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()  # the results come back to numpy: the GPU's work is done
        seconds.append(time.perf_counter() - start)
    step = float(np.median(seconds))
    row = {"n_atoms": len(atoms), "seconds_per_step": step,
           "us_per_atom_step": step / len(atoms) * 1e6,
           "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        row["peak_gpu_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def plot(path: Path, results: list[Path]) -> None:
    """µs per atom-step and peak memory against atoms, one line per result file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4 + 0.25 * len(results)))
    for result in results:
        data = json.loads(result.read_text())
        rows, settings = data["rows"], data["settings"]
        label = (f"angular cutoff {settings.get('angular_cutoff') or 5.0} Å, "
                 f"{settings['dtype']}, {settings.get('device', 'cpu')}, "
                 f"{settings['threads']} thread(s)")
        if data.get("label"):
            label += f", {data['label']}"
        n = [row["n_atoms"] for row in rows]
        line, = left.loglog(n, [row["us_per_atom_step"] for row in rows], "o-", label=label)
        right.loglog(n, [row["peak_rss_MiB"] for row in rows], "o-", color=line.get_color())
        if "peak_gpu_MiB" in rows[0]:  # dashed: the GPU's memory
            right.loglog(n, [row["peak_gpu_MiB"] for row in rows], "s--",
                         color=line.get_color())
    left.set_ylabel("µs per atom per MD step")
    right.set_ylabel("peak memory (MiB): resident, GPU dashed")
    for axis in (left, right):
        axis.set_xlabel("atoms (periodic water)")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(results) + 1) // 2), 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[2, 3, 5, 8, 12, 17])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--angular-cutoff", type=float)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model's device)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--label", help="what else sets this run apart (shown in the plot)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a subprocess's size
    parser.add_argument("--plot", type=Path, help="write this PNG from the result files given")
    parser.add_argument("results", type=Path, nargs="*")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.results)
        return
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.size, args.angular_cutoff, args.dtype,
                                  args.repeats, args.threads, args.device)))
        return
    rows = []
    for side in args.sides:
        command = [sys.executable, __file__, "--one", str(side), "--size", args.size,
                   "--dtype", args.dtype, "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--device", args.device]
        if args.angular_cutoff:
            command += ["--angular-cutoff", str(args.angular_cutoff)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"side {side}: failed ({done.stderr.strip().splitlines()[-1:]})", flush=True)
            break
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['n_atoms']:>7} atoms: {row['seconds_per_step'] * 1e3:10.1f} ms/step "
              f"{row['us_per_atom_step']:8.1f} µs/atom/step  peak {row['peak_rss_MiB']:8.0f} MiB",
              flush=True)
        if args.out:  # after every size: a run stopped at a time limit keeps what it did
            settings = {k: v for k, v in vars(args).items()
                        if k not in ("out", "one", "plot", "results", "label")}
            write_json(args.out, {"settings": settings, "rows": rows, "label": args.label})


if __name__ == "__main__":
    main()
