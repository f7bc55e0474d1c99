#!/usr/bin/env python
"""Label noise of known σ against the aleatoric and epistemic σ of a deep ensemble (acac).

    .venv/bin/python benchmarks/uncertainty_noise.py [--levels 0.03,0.075,0.15]
        [--members 4 --epochs 150 --beta 1] [--control-seed 4 --control-levels 0,0.03]
        [--out /tmp/noise]

Every ensemble trains on all 475 training frames of train_300K (4 bpnn members with variance
heads, β-NLL, 150 epochs, cosine schedule over the epochs; the protocol of
benchmarks/uncertainty_learning_curve.py, whose ``train`` runs each): once on clean labels
and once per noise level σ_F (eV/Å) with Gaussian noise of that σ on every force component
and σ_F / 30 per atom on energies (benchmarks/uncertainty_acac.py's ``noisy_copy``; 0.15
eV/Å goes with 5 meV/atom, the level of RESULTS' earlier noise runs); the labels of
``--control-levels`` (0: clean) once more with member seeds from ``--control-seed`` on (how
much the spread moves between two draws of members alone). Scored on the clean test sets
test_MD_300K and test_MD_600K: the ensemble mean's error against the true labels, the
members' plain spread (epistemic σ before the validation scale) and the variance heads' σ.
The head recovers the noise when √(σ_head² − σ_head,clean²) equals the added σ (σ_head,clean
from the clean run with the same member seeds). Writes OUT/results.json and a Markdown
table. Runs whose metrics.json exists are reused.
"""
from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import write_json
from uncertainty_acac import noisy_copy
from uncertainty_learning_curve import DATA, TESTS, row, train

N_TRAIN = 475  # all of train_300K's training split
ENERGY_PER_FORCE = 1 / 30  # energy noise (eV/atom) per force noise (eV/Å)


def recovered(noisy: float, clean: float) -> float:
    """The σ a head adds over its clean-label value: √(noisy² − clean²) (0 if smaller)."""
    return math.sqrt(max(noisy**2 - clean**2, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0.03,0.075,0.15", help="σ_F in eV/Å")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--control-seed", type=int, default=4)
    parser.add_argument("--control-levels", default="0,0.03",
                        help="σ_F (eV/Å; 0 = clean) also trained with --control-seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="/tmp/noise")
    args = parser.parse_args()
    args.aleatoric, args.lr_schedule, args.minutes = True, "cosine", None
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    levels = [float(level) for level in args.levels.split(",")]
    controls = [float(level) for level in args.control_levels.split(",")]
    jobs = {}  # name: (training file, run tag, first member seed, added σ_F)
    for level in [0.0, *levels]:
        train_file, label, tag = DATA / "train_300K.xyz", "clean", ""
        if level:
            train_file = out / f"train_300K_noise{level:g}.xyz"
            if not train_file.exists():
                noisy_copy(DATA / "train_300K.xyz", train_file, level, level * ENERGY_PER_FORCE)
            label, tag = f"σ_F {1000 * level:g} meV/Å", f"_noise{level:g}"
        jobs[label] = (train_file, tag, 0, level)
        if level in controls:
            jobs[f"{label}, other seeds"] = (train_file, f"{tag}_seed{args.control_seed}",
                                             args.control_seed, level)
    with ThreadPoolExecutor(args.workers) as pool:
        summaries = dict(zip(jobs, pool.map(
            lambda name: train(out, N_TRAIN, args, *jobs[name][:3]), jobs)))
    rows = {name: row(N_TRAIN, summary, name) for name, summary in summaries.items()}
    lines = ["| labels | test set | E RMSE / spread / head σ (meV/atom) | head E noise "
             "recovered | F RMSE / spread / head σ (meV/Å) | head F noise recovered | F spread "
             "/ F RMSE |", "|---" * 7 + "|"]
    for name, result in rows.items():
        control = name.endswith(", other seeds") and "clean, other seeds" in rows
        clean = rows["clean, other seeds" if control else "clean"]  # the same member seeds
        for test in TESTS:
            r, c = result[test], clean[test]
            r["energy_noise_recovered"] = recovered(r["energy_sigma_aleatoric"],
                                                    c["energy_sigma_aleatoric"])
            r["force_noise_recovered"] = recovered(r["force_sigma_aleatoric"],
                                                   c["force_sigma_aleatoric"])
            lines.append(
                f"| {name} | {test} | {r['energy_rmse']:.2f} / {r['energy_sigma_spread']:.3f} / "
                f"{r['energy_sigma_aleatoric']:.2f} | {r['energy_noise_recovered']:.2f} of "
                f"{1000 * jobs[name][3] * ENERGY_PER_FORCE:.2f} | {r['force_rmse']:.1f} / "
                f"{r['force_sigma_spread']:.1f} / {r['force_sigma_aleatoric']:.1f} | "
                f"{r['force_noise_recovered']:.1f} of {1000 * jobs[name][3]:.0f} | "
                f"{r['force_sigma_spread'] / r['force_rmse']:.3f} |")
    write_json(out / "results.json",
               {"n_train": N_TRAIN, "members": args.members, "epochs": args.epochs,
                "beta": args.beta, "lr_schedule": "cosine",
                "energy_noise_per_force_noise": ENERGY_PER_FORCE, "date": time.ctime(),
                "rows": rows})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
