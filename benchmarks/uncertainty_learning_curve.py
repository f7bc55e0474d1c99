#!/usr/bin/env python
"""Epistemic uncertainty against training-set size (acac, deep ensembles of bpnn members).

    .venv/bin/python benchmarks/uncertainty_learning_curve.py --sizes 25,50,100,200,400 \
        --members 3 --minutes 1.5 [--workers 2] [--out benchmarks/out/uncertainty_lc]

For every size n an ensemble trains on the first n frames of train_300K's training split
(``data.max_train``; same validation split for all), each member ``--minutes`` on one thread,
``--workers`` runs at a time. Each is scored on test_MD_300K and test_MD_600K: force RMSE and
the mean epistemic force σ, both as the members' plain spread and after the recalibration
fitted on validation. Writes OUT/results.json, OUT/sigma_vs_size.png and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "acac"
TESTS = ["test_MD_300K", "test_MD_600K"]


def train(out: Path, size: int, members: int, minutes: float) -> dict:
    """Train one ensemble on ``size`` frames (a subprocess); its metrics.json as a dict."""
    import yaml

    run = out / f"n{size}"
    config = out / f"n{size}.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(DATA / "train_300K.xyz"), "max_train": size,
                 "isolated_atoms": str(DATA / "isolated_atoms.xyz"),
                 "test": [str(DATA / f"{name}.xyz") for name in TESTS]},
        "model": {"kind": "bpnn"},
        "training": {"max_minutes": minutes, "ensemble": members, "threads": 1,
                     "patience": 100000},
        "seed": 0, "out": str(run)}))
    with open(out / f"n{size}.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "mlpot", "train", str(config)],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if code != 0:
        sys.exit(f"n = {size} failed; see {out / f'n{size}.log'}")
    return json.loads((run / "metrics.json").read_text())


def row(size: int, summary: dict) -> dict:
    scale = summary["recalibration"]["forces"]["scale"]
    result = {"n_train": size, "sigma_scale_forces": scale}
    for test in TESTS:
        metrics = summary["metrics"][test]
        sigma = metrics["force_sigma_epistemic"]
        result[test] = {"force_rmse": metrics["force_rmse"], "force_sigma_recalibrated": sigma,
                        "force_sigma_spread": sigma / scale,
                        "spearman_force": metrics["spearman_force"]}
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["n_train"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for test, colour in zip(TESTS, ("C0", "C3")):
        ax.plot(sizes, [r[test]["force_rmse"] for r in rows], "o-", color=colour,
                label=f"{test}: force RMSE")
        ax.plot(sizes, [r[test]["force_sigma_spread"] for r in rows], "s--", color=colour,
                label=f"{test}: epistemic σ (spread)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training structures")
    ax.set_ylabel("meV/Å")
    ax.legend(fontsize=7)
    ax.set_title("acac: error and epistemic force σ vs data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="25,50,100,200,400")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/uncertainty_lc"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    with ThreadPoolExecutor(args.workers) as pool:
        summaries = list(pool.map(lambda n: train(out, n, args.members, args.minutes), sizes))
    rows = [row(n, s) for n, s in zip(sizes, summaries)]
    results = {"members": args.members, "minutes_per_member": args.minutes,
               "date": time.ctime(), "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(rows, out / "sigma_vs_size.png")
    lines = ["| n train | test set | F RMSE | epistemic F σ: spread / recalibrated | "
             "Spearman F |", "|---" * 5 + "|"]
    for r in rows:
        for test in TESTS:
            m = r[test]
            lines.append(f"| {r['n_train']} | {test} | {m['force_rmse']:.1f} | "
                         f"{m['force_sigma_spread']:.1f} / {m['force_sigma_recalibrated']:.1f} | "
                         f"{m['spearman_force']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
