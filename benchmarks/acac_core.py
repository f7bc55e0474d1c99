"""Core benchmark on acac: bpnn and linear against MACE at equal CPU time, in one run.

    python benchmarks/acac_core.py --minutes 60 --snapshots 10,30 --threads 1 \
        --out benchmarks/out/acac_core [--mace]

bpnn trains in a subprocess (``mlpot train``) while MACE (benchmarks/peers/mace_run.py, in
its own venv .peers/mace; set up with benchmarks/peers/setup_mace.sh) trains beside it, each
on ``--threads`` threads, for the same wall-clock minutes. Snapshots are the best model on
validation at each mark. Then the linear model is fitted, every model is scored on
test_MD_300K, test_MD_600K and test_H_transfer with ``mlpot eval --json``, and inference is
timed per MD step on acac (15 atoms) and on a periodic box of 64 acac molecules (960 atoms).
Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ACAC as DATA, OUT, ROOT, write_json

TESTS = ["test_MD_300K", "test_MD_600K", "test_H_transfer"]


def bpnn_config(out: Path, minutes: float, snapshots: list[float], threads: int) -> Path:
    import yaml

    config = {"data": {"train": str(DATA / "train_300K.xyz"),
                       "isolated_atoms": str(DATA / "isolated_atoms.xyz")},
              "model": {"kind": "bpnn", "cutoff": 5.0},
              "training": {"max_minutes": minutes, "snapshot_minutes": snapshots,
                           "threads": threads, "patience": 100000},
              "seed": 0, "out": str(out)}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def evaluate(model: Path) -> dict:
    results = {}
    for name in TESTS:
        output = subprocess.run([sys.executable, "-m", "mlpot", "eval", str(model),
                                 str(DATA / f"{name}.xyz"), "--json"], check=True,
                                capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    return results


def acac_box(n_side: int = 4, spacing: float = 6.5):
    """A periodic cubic box of n_side³ acac molecules (15 atoms each), Å."""
    from ase.io import read

    molecule = read(DATA / "test_MD_300K.xyz", index=0)
    molecule.positions -= molecule.positions.mean(0)
    box = molecule.copy()
    box.cell = np.eye(3) * spacing
    box.pbc = True
    box = box.repeat((n_side, n_side, n_side))
    rng = np.random.default_rng(0)
    box.positions += rng.normal(0, 0.02, box.positions.shape)
    return box


def time_calls(calculator, atoms, repeats: int) -> float:
    """Mean ms per energy+forces call after warm-up, positions jittered each call."""
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(1)
    base = atoms.positions.copy()
    for _ in range(3):
        atoms.positions = base + rng.normal(0, 1e-3, base.shape)
        atoms.get_forces()
    started = time.perf_counter()
    for _ in range(repeats):
        atoms.positions = base + rng.normal(0, 1e-3, base.shape)
        atoms.get_forces()
    return (time.perf_counter() - started) / repeats * 1000


def inference(model: Path, threads: int) -> dict:
    import torch
    from ase.io import read

    import mlpot

    torch.set_num_threads(threads)
    molecule = read(DATA / "test_MD_300K.xyz", index=0)
    box = acac_box()
    timings = {}
    for dtype in ("float64", "float32"):
        calculator = mlpot.Calculator(model, dtype=dtype)
        timings[f"acac_ms_{dtype}"] = time_calls(calculator, molecule, 100)
        timings[f"box960_ms_{dtype}"] = time_calls(calculator, box, 5)
    return timings


def throughput(run: Path) -> float:
    """Training structures per second over the whole run (epochs × n_train / seconds)."""
    import csv

    info = json.loads((run / "run.json").read_text())
    rows = list(csv.DictReader(open(run / "log.csv")))
    return int(rows[-1]["epoch"]) * info["n_train"] / (float(rows[-1]["minutes"]) * 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--snapshots", default="10,30")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT / "acac_core"))
    parser.add_argument("--mace", action="store_true", help="train MACE beside bpnn")
    parser.add_argument("--score-only", action="store_true",
                        help="skip training; score and time the models of an earlier run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    snapshots = [float(s) for s in args.snapshots.split(",") if s]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    jobs = {}
    config = bpnn_config(out / "bpnn", args.minutes, snapshots, args.threads)
    if not args.score_only:
        jobs["bpnn"] = subprocess.Popen([sys.executable, "-m", "mlpot", "train", str(config)],
                                        env=env, stdout=open(out / "bpnn.log", "w"),
                                        stderr=subprocess.STDOUT)
    if args.mace and not args.score_only:
        mace_python = ROOT / ".peers" / "mace" / "bin" / "python"
        marks = ",".join(f"{m:g}" for m in snapshots + [args.minutes])
        jobs["mace"] = subprocess.Popen(
            [str(mace_python), str(ROOT / "benchmarks" / "peers" / "mace_run.py"),
             "--train", str(DATA / "train_300K.xyz"), "--isolated", str(DATA / "isolated_atoms.xyz"),
             "--tests", *[str(DATA / f"{name}.xyz") for name in TESTS],
             "--minutes", str(args.minutes), "--snapshots", marks, "--threads",
             str(args.threads), "--out", str(out / "mace")],
            env=env, stdout=open(out / "mace.log", "w"), stderr=subprocess.STDOUT)
    for name, job in jobs.items():
        if job.wait() != 0:
            sys.exit(f"{name} failed; see {out / (name + '.log')}")

    results = {"minutes": args.minutes, "threads": args.threads, "date": time.ctime(),
               "machine": f"{os.cpu_count()} CPU cores", "bpnn": {}, "linear": {}}
    bpnn = out / "bpnn"
    for mark in snapshots:
        results["bpnn"][f"{mark:g}"] = evaluate(bpnn / "snapshots" / f"model_{mark:g}min")
    results["bpnn"][f"{args.minutes:g}"] = evaluate(bpnn / "model")
    results["bpnn_structures_per_s"] = throughput(bpnn)
    results["bpnn_inference"] = inference(bpnn / "model", args.threads)

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlpot", "train", "--train",
                    str(DATA / "train_300K.xyz"), "--isolated-atoms",
                    str(DATA / "isolated_atoms.xyz"), "--model", "linear", "--threads",
                    str(args.threads), "--out", str(out / "linear")], check=True, env=env,
                   capture_output=True)
    results["linear_fit_minutes"] = (time.perf_counter() - started) / 60
    results["linear"]["fit"] = evaluate(out / "linear" / "model")
    results["linear_inference"] = inference(out / "linear" / "model", args.threads)
    if args.mace:
        results["mace"] = json.loads((out / "mace" / "results.json").read_text())
    write_json(out / "results.json", results)
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| model | minutes | " + " | ".join(f"{t} E / F RMSE" for t in TESTS) + " |",
             "|---|---|" + "---|" * len(TESTS)]

    def cell(metrics):  # mlpot's keys, or the MACE script's (…_meV_atom, …_meV_A)
        energy = metrics.get("energy_rmse", metrics.get("energy_rmse_meV_atom"))
        force = metrics.get("force_rmse", metrics.get("force_rmse_meV_A"))
        return f"{energy:.2f} / " + (f"{force:.1f}" if force else "–")

    for kind in ("bpnn", "linear"):
        for mark, sets in results[kind].items():
            lines.append(f"| {kind} | {mark} | " + " | ".join(cell(sets[t]) for t in TESTS) + " |")
    mace = results.get("mace", {}).get("snapshots", {})
    for mark, sets in mace.items():
        if sets:
            lines.append(f"| MACE | {mark} | " + " | ".join(
                cell(sets[t]) if t in sets else "–" for t in TESTS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
