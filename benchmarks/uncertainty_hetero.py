#!/usr/bin/env python
"""Ensembles of different architectures against a bpnn-only ensemble, on acac.

    .venv/bin/python benchmarks/uncertainty_hetero.py [--out benchmarks/out/uncertainty_hetero]
        [--evaluate-only] [--minutes 15 --bpnn-members 1] [--seed 1]

Trains, two at a time (one thread each), on train_300K with aleatoric variance heads (β-NLL,
β = 1): a bpnn ensemble of 4 members × 150 epochs (seeds 0–3, the protocol of RESULTS'
"Log-variance heads" runs), and one SchNet, two PaiNN (seeds 0, 1) and one equivariant
member, 5 minutes each (about a bpnn member's 150 epochs). Then scores ensembles assembled
from these members (``mlpot.uncertainty.ensemble.Ensemble`` accepts members of different
kinds that share elements and cutoff) on test_MD_300K, test_MD_600K and test_H_transfer:
Spearman per structure on the union of the three sets (benchmarks/uncertainty_acac.py's
``union_scores``) and energy / force RMSE of the ensemble mean. Writes OUT/results.json.
``--minutes`` trains every member for that many minutes instead (``--bpnn-members`` sets
the bpnn run's size; its members share the run's validation split); ``--seed`` adds to every
run's seed (a second draw of members); ensembles whose members were not trained are left out.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import OUT, write_json
from uncertainty_acac import DATA, TESTS, config, union_scores

RUNS = {  # name: (kind, members, epochs or None, minutes or None, seed)
    "bpnn": ("bpnn", 4, 150, None, 0),
    "schnet": ("schnet", 1, None, 5, 0),
    "painn": ("painn", 1, None, 5, 0),
    "painn_seed1": ("painn", 1, None, 5, 1),
    "equivariant": ("equivariant", 1, None, 5, 0),
}
COMBOS = {  # ensemble: members as (run, member index)
    "bpnn ×4": [("bpnn", k) for k in range(4)],
    "bpnn ×3": [("bpnn", k) for k in range(3)],
    "bpnn + SchNet + PaiNN + equivariant": [("bpnn", 0), ("schnet", 0), ("painn", 0),
                                            ("equivariant", 0)],
    "bpnn + SchNet + PaiNN": [("bpnn", 0), ("schnet", 0), ("painn", 0)],
    "bpnn ×2 + SchNet + PaiNN": [("bpnn", 0), ("bpnn", 1), ("schnet", 0), ("painn", 0)],
    "bpnn + PaiNN + equivariant": [("bpnn", 0), ("painn", 0), ("equivariant", 0)],
    "bpnn ×2 + PaiNN ×2": [("bpnn", 0), ("bpnn", 1), ("painn", 0), ("painn_seed1", 0)],
    "bpnn ×3 + SchNet": [("bpnn", 0), ("bpnn", 1), ("bpnn", 2), ("schnet", 0)],
    "PaiNN ×2": [("painn", 0), ("painn_seed1", 0)],
}


def write_config(out: Path, name: str, args) -> Path:
    """The run's training YAML (uncertainty_acac's, with this run's kind, size and seed)."""
    kind, members, epochs, minutes, seed = RUNS[name]
    if args.minutes:
        epochs, minutes = None, args.minutes
    if name == "bpnn":
        members = args.bpnn_members
    return config(out / name, DATA / "train_300K.xyz", members, minutes, epochs, beta=1.0,
                  kind=kind, seed=seed + args.seed)


def train_all(out: Path, args) -> None:
    """The runs, two at a time (the bpnn run, the longest, first)."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(name: str) -> None:
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.run([sys.executable, "-m", "mlpot", "train",
                                   str(write_config(out, name, args))], env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            sys.exit(f"{name} failed; see {out / (name + '.log')}")

    names = ["bpnn"] + [name for name in args.runs if name != "bpnn"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(train, names))


def member(out: Path, run: str, index: int):
    from mlpot.uncertainty.ensemble import Ensemble, load_model

    model = load_model(out / run / "model")
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    return members[index]  # IndexError: the run trained fewer members


def score(ensemble, frames: dict) -> dict:
    """Spearman on the union of the test sets and the ensemble mean's energy / force RMSE on
    each (``frames``: test name → frames)."""
    from mlpot.train.metrics import error_metrics, predict

    scored = [(frames[test], predict(ensemble, frames[test])) for test in TESTS]
    metrics = {test: error_metrics(*pair) for test, pair in zip(TESTS, scored)}
    return {"spearman_union": union_scores(scored),
            "energy_rmse_meV_per_atom": {t: m["energy_rmse"] for t, m in metrics.items()},
            "force_rmse_meV_per_A": {t: m["force_rmse"] for t, m in metrics.items()
                                     if m["force_rmse"] is not None}}


def evaluate(out: Path) -> dict:
    import torch

    from mlpot.data.records import read_frames
    from mlpot.errors import ModelFileError
    from mlpot.uncertainty.ensemble import Ensemble

    torch.set_num_threads(1)
    frames = {test: read_frames(DATA / f"{test}.xyz") for test in TESTS}
    results = {}
    for label, parts in COMBOS.items():
        try:
            ensemble = Ensemble([member(out, run, index) for run, index in parts]).eval()
        except (IndexError, ModelFileError):  # a member this run did not train
            continue
        results[label] = score(ensemble, frames)
        print(row(label, results[label]), flush=True)
    return results


def row(label: str, result: dict) -> str:
    u, e, f = (result["spearman_union"], result["energy_rmse_meV_per_atom"],
               result["force_rmse_meV_per_A"])
    return (f"| {label} | {u['energy_total']:.2f} / {u['energy_epistemic']:.2f} "
            f"({u['energy_reference']:.2f}) | {u['force_structure_total']:.2f} / "
            f"{u['force_structure_epistemic']:.2f} | "
            + " / ".join(f"{e[t]:.2f}" for t in TESTS) + " | "
            + " / ".join(f"{f[t]:.1f}" for t in TESTS if t in f) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT / "uncertainty_hetero"))
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the ensembles of an earlier run's members")
    parser.add_argument("--minutes", type=float, help="every member this many minutes")
    parser.add_argument("--bpnn-members", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="added to every run's seed")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                        help="which runs to train (the bpnn run always)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        train_all(out, args)
    print("| ensemble | union Spearman E: total / epistemic σ (calibrated ref.) | union "
          "Spearman F per structure: total / epistemic | E RMSE 300 K / 600 K / H transfer "
          "(meV/atom) | F RMSE 300 K / 600 K (meV/Å) |\n|---|---|---|---|---|")
    write_json(out / "results.json", evaluate(out))


if __name__ == "__main__":
    main()
