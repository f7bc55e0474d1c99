#!/usr/bin/env python
"""Epistemic uncertainty against training-set size (acac, deep ensembles of bpnn members).

    .venv/bin/python benchmarks/uncertainty_learning_curve.py --sizes 25,50,100,200,400 \
        --members 3 --minutes 1.5 [--workers 2] [--out benchmarks/out/uncertainty_lc]
        [--epochs 150] [--aleatoric --beta 1] [--noise-force 0.15 --noise-energy 0.005]
        [--lr-schedule cosine]

For every size n an ensemble trains on the first n frames of train_300K's training split
(``data.max_train``; same validation split for all), each member ``--minutes`` on one thread,
``--workers`` runs at a time. Each is scored on test_MD_300K and test_MD_600K: force RMSE and
the mean epistemic force σ, both as the members' plain spread and after the recalibration
fitted on validation. Writes OUT/results.json, OUT/sigma_vs_size.png and a Markdown table.

With ``--noise-force`` every size is trained twice, on clean labels and on labels with
Gaussian noise of that σ added (benchmarks/uncertainty_acac.py's ``noisy_copy``, validation
split noisy too): how much of the members' spread the noise adds, against n. ``--epochs``
trains a fixed number of epochs per member instead of ``--minutes``; ``--aleatoric`` adds
variance heads (β-NLL with ``--beta``); ``--lr-schedule`` sets training.lr_schedule (default:
the trainer's ``auto``; ``cosine`` with ``--epochs`` decays over the epochs).
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

from common import ACAC as DATA, OUT, write_json

TESTS = ["test_MD_300K", "test_MD_600K"]


def train(out: Path, size: int, args, train_file: Path = DATA / "train_300K.xyz",
          tag: str = "", seed: int = 0) -> dict:
    """Train one ensemble on ``size`` frames of ``train_file`` (a subprocess; members seeds
    ``seed`` …); its metrics.json as a dict. A run whose metrics.json exists is not redone."""
    import yaml

    name = f"n{size}{tag}"
    if (out / name / "metrics.json").exists():
        return json.loads((out / name / "metrics.json").read_text())
    budget = ({"max_epochs": args.epochs, "max_minutes": None} if args.epochs
              else {"max_minutes": args.minutes})
    heads = {"aleatoric": True, "beta_nll": args.beta} if args.aleatoric else {}
    schedule = {"lr_schedule": args.lr_schedule} if args.lr_schedule else {}
    config = out / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(train_file), "max_train": size,
                 "isolated_atoms": str(DATA / "isolated_atoms.xyz"),
                 "test": [str(DATA / f"{test}.xyz") for test in TESTS]},
        "model": {"kind": "bpnn"},
        "training": {**budget, **heads, **schedule, "ensemble": args.members, "threads": 1,
                     "patience": 100000},
        "seed": seed, "out": str(out / name)}))
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "mlpot", "train", str(config)],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if code != 0:
        sys.exit(f"{name} failed; see {out / f'{name}.log'}")
    return json.loads((out / name / "metrics.json").read_text())


def row(size: int, summary: dict, labels: str = "clean") -> dict:
    """Per test set from an ensemble's metrics.json: errors (meV/atom, meV/Å), the epistemic
    σ recalibrated and as the members' plain spread (divided by the validation scale), the
    variance heads' σ (None without heads) and the force Spearman."""
    scale = summary["recalibration"]["forces"]["scale"]
    energy_scale = summary["recalibration"]["energy"]["scale"]
    result = {"n_train": size, "labels": labels, "sigma_scale_forces": scale}
    for test in TESTS:
        metrics = summary["metrics"][test]
        sigma = metrics["force_sigma_epistemic"]
        result[test] = {"force_rmse": metrics["force_rmse"], "force_sigma_recalibrated": sigma,
                        "force_sigma_spread": sigma / scale,
                        "force_sigma_aleatoric": metrics.get("force_sigma_aleatoric"),
                        "spearman_force": metrics["spearman_force"],
                        "energy_rmse": metrics["energy_rmse"],
                        "energy_sigma_spread": metrics["energy_sigma_epistemic"] / energy_scale,
                        "energy_sigma_aleatoric": metrics.get("energy_sigma_aleatoric")}
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n_train"] for r in rows})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for labels, style in (("clean", "-"), ("noisy", ":")):
        part = [r for r in rows if r["labels"] == labels]
        if not part:
            continue
        suffix = "" if labels == "clean" else ", noisy labels"
        for test, colour in zip(TESTS, ("C0", "C3")):
            n = [r["n_train"] for r in part]
            ax.plot(n, [r[test]["force_rmse"] for r in part], "o" + style, color=colour,
                    label=f"{test}: force RMSE{suffix}")
            ax.plot(n, [r[test]["force_sigma_spread"] for r in part], "s" + style,
                    color=colour, alpha=0.6, label=f"{test}: epistemic σ (spread){suffix}")
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
    parser.add_argument("--out", default=str(OUT / "uncertainty_lc"))
    parser.add_argument("--epochs", type=int, help="epochs per member instead of --minutes")
    parser.add_argument("--aleatoric", action="store_true", help="members with variance heads")
    parser.add_argument("--beta", type=float, default=1.0, help="β-NLL exponent")
    parser.add_argument("--noise-force", type=float, help="eV/Å: also train on noisy labels")
    parser.add_argument("--noise-energy", type=float, default=0.005, help="eV/atom")
    parser.add_argument("--lr-schedule", choices=["plateau", "cosine"],
                        help="training.lr_schedule (default: the trainer's auto)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    jobs = [(n, "clean", DATA / "train_300K.xyz") for n in sizes]
    if args.noise_force:
        from uncertainty_acac import noisy_copy

        noisy = out / "train_300K_noisy.xyz"
        noisy_copy(DATA / "train_300K.xyz", noisy, args.noise_force, args.noise_energy)
        jobs += [(n, "noisy", noisy) for n in sizes]
    jobs.sort(key=lambda job: -job[0])  # the largest first: the two workers end together
    with ThreadPoolExecutor(args.workers) as pool:
        summaries = list(pool.map(lambda job: train(
            out, job[0], args, job[2], "" if job[1] == "clean" else "_noisy"), jobs))
    rows = sorted((row(n, s, labels) for (n, labels, _), s in zip(jobs, summaries)),
                  key=lambda r: (r["labels"], r["n_train"]))
    results = {"members": args.members, "minutes_per_member": args.minutes,
               "epochs_per_member": args.epochs, "aleatoric": args.aleatoric,
               "lr_schedule": args.lr_schedule or "auto",
               "noise": {"force_eV_per_A": args.noise_force,
                         "energy_eV_per_atom": args.noise_energy if args.noise_force else None},
               "date": time.ctime(), "rows": rows}
    write_json(out / "results.json", results)
    plot(rows, out / "sigma_vs_size.png")
    lines = ["| labels | n train | test set | F RMSE | epistemic F σ: spread / recalibrated | "
             "aleatoric F σ | Spearman F |", "|---" * 7 + "|"]
    for r in rows:
        for test in TESTS:
            m = r[test]
            aleatoric = m["force_sigma_aleatoric"]
            lines.append(f"| {r['labels']} | {r['n_train']} | {test} | {m['force_rmse']:.1f} | "
                         f"{m['force_sigma_spread']:.1f} / {m['force_sigma_recalibrated']:.1f} | "
                         f"{'–' if aleatoric is None else f'{aleatoric:.1f}'} | "
                         f"{m['spearman_force']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
