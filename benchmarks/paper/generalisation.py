#!/usr/bin/env python
"""Test error on independent trajectories against validation error, every model kind
(issue 19, item 3).

    .venv/bin/python benchmarks/paper/generalisation.py benchmarks/out/xtb_md/ethanol \
        --kinds bpnn,linear,schnet,painn,equivariant --out benchmarks/out/generalisation/ethanol

The folder holds ``train_300K.xyz``, ``test_300K.xyz`` and ``test_600K.xyz``
(``xtb_trajectories.py``). Each kind trains on train_300K (validation: ``--valid-fraction`` of
it, drawn as ``data.valid_split`` says) for its epoch budget (cosine schedule over the epochs,
so the result does not depend on the machine's load), then ``metrics.json`` gives validation
and test errors. ``results.json``: per kind, force/energy RMSE on validation and both tests and
the ratios test/validation. A folder already trained is only read again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import write_json

# epochs per kind: about 5–8 idle minutes each on 475 ethanol frames, one thread
EPOCHS = {"bpnn": 400, "linear": 1, "schnet": 300, "painn": 200, "equivariant": 80}


def train(kind: str, data: Path, out: Path, epochs: int, extra: list[str]) -> None:
    if (out / "metrics.json").exists():
        return
    command = [sys.executable, "-m", "mlpot", "train", "--train", str(data / "train_300K.xyz"),
               "--test", str(data / "test_300K.xyz"), "--test", str(data / "test_600K.xyz"),
               "--model", kind, "--max-epochs", str(epochs), "--threads", "1",
               "--set", "training.max_minutes=null", "--set", "training.lr_schedule=cosine",
               "--set", "training.patience=1000000", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(" ".join(command), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as stream:
        subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT, check=True)


def force_scales(data: Path) -> dict:
    """RMS of the reference force components of each file (meV/Å): the yardstick of a
    relative error (a hotter trajectory has larger forces)."""
    from mlpot.data.dataset import force_rms
    from mlpot.data.records import read_frames

    return {name: round(1000 * force_rms(read_frames(str(data / f"{name}.xyz"))), 1)
            for name in ("train_300K", "test_300K", "test_600K")}


def row(out: Path, scales: dict) -> dict:
    """Energy (meV/atom) and force (meV/Å) RMSE on validation and the tests, the ratios
    test/validation of the force RMSE and of the relative force RMSE (RMSE / RMS force)."""
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    valid = metrics["valid"]
    result = {"valid": [round(valid["energy_rmse"], 3), round(valid["force_rmse"], 2)]}
    for name in ("test_300K", "test_600K"):
        m = metrics[name]
        result[name] = [round(m["energy_rmse"], 3), round(m["force_rmse"], 2)]
        ratio = m["force_rmse"] / valid["force_rmse"]
        result[f"{name}/valid force"] = round(ratio, 2)
        result[f"{name}/valid relative force"] = round(
            ratio * scales["train_300K"] / scales[name], 2)
    return result


def markdown(results: dict, molecule: str) -> str:
    """Rows of the RESULTS.md table: kind, epochs, validation / test E and F RMSE, ratios."""
    lines = []
    for name, r in results.items():
        if name == "force_rms":
            continue
        lines.append(f"| {molecule} | {name} | {r['valid'][0]:.2f} / {r['valid'][1]:.1f} | "
                     f"{r['test_300K'][0]:.2f} / {r['test_300K'][1]:.1f} | "
                     f"**{r['test_300K/valid force']:.2f}** | "
                     f"{r['test_600K'][0]:.2f} / {r['test_600K'][1]:.1f} | "
                     f"{r['test_600K/valid force']:.2f} ({r['test_600K/valid relative force']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder with train_300K/test_300K/test_600K.xyz")
    parser.add_argument("--kinds", default="bpnn,linear,schnet,painn,equivariant")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="", help="suffix of the run folders (ablations)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to mlpot train (repeatable)")
    args = parser.parse_args()
    extra = [item for pair in (("--set", s) for s in args.set) for item in pair]
    results = {}
    results_file = args.out / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
    results["force_rms"] = scales = force_scales(args.data)
    for kind in args.kinds.split(","):
        name = kind + args.tag
        train(kind, args.data, args.out / name, EPOCHS[kind], extra)
        results[name] = {**row(args.out / name, scales), "settings": args.set}
        print(name, json.dumps(results[name]), flush=True)
        write_json(results_file, results)
    print(markdown(results, args.data.name))


if __name__ == "__main__":
    main()
