#!/usr/bin/env python
"""Few CCSD(T) labels on top of many DFT ones: fine-tuning and Δ-learning on water.

    .venv/bin/python benchmarks/delta_water.py [--out benchmarks/out/delta_water]
        [--n-dft 200] [--n-cc 10] [--n-test 50] [--minutes 1.0] [--workers 2]

Structures: GFN2-xTB Langevin MD of one water molecule at 800 K (ASE + tblite). Labels with
`mlpot label` on a local Dask cluster: B3LYP/cc-pVDZ for ``--n-dft`` training structures,
CCSD(T)/cc-pVDZ for ``--n-cc`` of them and for ``--n-test`` held-out ones, GFN2-xTB for all
(the Δ baseline). Four bpnn models (``--minutes`` each), all scored against CCSD(T) on the
held-out structures:
  A  DFT only (n_dft labels);
  B  A fine-tuned on the n_cc CCSD(T) labels (training.init_model);
  C  Δ-learning: CCSD(T) − xTB on the n_cc structures, predictions = xTB + Δ;
  D  CCSD(T) only, the same n_cc labels from scratch;
  E  Δ-learning on the DFT baseline: CCSD(T) − B3LYP, predictions = B3LYP + Δ.
Energies are compared after removing each model's mean offset (DFT and CCSD(T) totals differ
by a constant); forces as they are. Also the cost ledger (`mlpot report`).
Writes OUT/results.json and prints a table.
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

from common import OUT, write_json

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CC = "pyscf/ccsd(t)/cc-pvdz"
DFT = "pyscf/b3lyp/cc-pvdz"
XTB = "xtb/gfn2-xtb"


def water_structures(n: int, seed: int = 0):
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tblite.ase import TBLite

    rng = np.random.default_rng(seed)
    atoms = molecule("H2O")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=800, rng=rng)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=800, friction=0.02 / units.fs,
                        rng=rng)
    frames = []
    for _ in range(n):
        dynamics.run(20)
        frames.append(atoms.copy())
    return frames


def label(structures: Path, db: Path, workers: int, *engine: str) -> None:
    subprocess.run([sys.executable, "-m", "mlpot", "label", str(structures), "--db", str(db),
                    "--workers", str(workers), *engine], check=True, env=ENV,
                   stdout=subprocess.DEVNULL)


def train(out: Path, name: str, data: dict, minutes: float, init: Path | None = None) -> Path:
    import yaml

    run = out / name
    if not (run / "metrics.json").exists():
        training = {"max_minutes": minutes, "threads": 1}
        if init:
            training["init_model"] = str(init)
        config = out / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"data": {"valid_fraction": 0.2, **data},
                                          "model": {"kind": "bpnn", "size": "small"},
                                          "training": training, "seed": 0, "out": str(run)}))
        with open(out / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "mlpot", "train", str(config)], check=True,
                           env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return run / "model"


def score(model: Path, test_db: Path, baseline: str | None) -> dict:
    """Errors against CCSD(T) on the test structures: energy (offset removed) and forces
    (a Δ-model against CCSD(T) − its baseline: the same errors)."""
    from mlpot.data.records import read_frames
    from mlpot.label.delta import delta_frames
    from mlpot.train.metrics import evaluate
    from mlpot.uncertainty.ensemble import load_model

    frames = (delta_frames(test_db, CC, baseline) if baseline
              else read_frames(test_db, db_select=f"level={CC}"))
    metrics, predicted = evaluate(load_model(model), frames)
    n = np.array([len(f) for f in frames])
    energy_error = (np.array(predicted["energy"]) - [f.energy for f in frames]) / n
    return {"energy_rmse_offset_removed": float(np.std(energy_error) * 1000),
            "energy_offset": float(np.mean(energy_error) * 1000),
            "force_rmse": metrics["force_rmse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT / "delta_water"))
    parser.add_argument("--n-dft", type=int, default=200)
    parser.add_argument("--n-cc", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from ase.io import write

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not (out / "test.xyz").exists():  # a rerun labels and trains only what is missing
        frames = water_structures(args.n_dft + args.n_test)
        rng = np.random.default_rng(1)
        order = rng.permutation(len(frames))
        train_frames = [frames[k] for k in order[:args.n_dft]]
        test_frames = [frames[k] for k in order[args.n_dft:]]
        for name, subset in (("train_all", train_frames), ("train_cc", train_frames[:args.n_cc]),
                             ("test", test_frames)):
            write(out / f"{name}.xyz", subset)
    train_db, test_db = out / "train.db", out / "test.db"
    label(out / "train_all.xyz", train_db, args.workers, "--engine", "pyscf", "--method",
          "b3lyp", "--basis", "cc-pvdz")
    label(out / "train_cc.xyz", train_db, args.workers, "--engine", "pyscf", "--method",
          "ccsd(t)", "--basis", "cc-pvdz")
    label(out / "train_cc.xyz", train_db, args.workers, "--engine", "xtb")
    label(out / "test.xyz", test_db, args.workers, "--engine", "pyscf", "--method",
          "ccsd(t)", "--basis", "cc-pvdz")
    label(out / "test.xyz", test_db, args.workers, "--engine", "xtb")
    label(out / "test.xyz", test_db, args.workers, "--engine", "pyscf", "--method", "b3lyp",
          "--basis", "cc-pvdz")  # the baseline of model E

    models = {}
    models["A: DFT only"] = (train(out, "dft", {"train": str(train_db),
                                                "db_select": f"level={DFT}"}, args.minutes),
                             None)
    models["B: A fine-tuned on CCSD(T)"] = (train(
        out, "finetune", {"train": str(train_db), "db_select": f"level={CC}"}, args.minutes,
        init=models["A: DFT only"][0]), None)
    models["C: xTB + Δ(CCSD(T) − xTB)"] = (train(
        out, "delta", {"train": str(train_db), "db_select": f"level={CC}",
                       "delta_baseline": XTB}, args.minutes), XTB)
    models["E: DFT + Δ(CCSD(T) − DFT)"] = (train(
        out, "delta_dft", {"train": str(train_db), "db_select": f"level={CC}",
                           "delta_baseline": DFT}, args.minutes), DFT)
    models["D: CCSD(T) only"] = (train(out, "cc_only", {"train": str(train_db),
                                                        "db_select": f"level={CC}"},
                                       args.minutes), None)
    results = {name: score(model, test_db, base) for name, (model, base) in models.items()}
    ledger = json.loads(subprocess.run(
        [sys.executable, "-m", "mlpot", "report", str(train_db), "--model",
         str(models["B: A fine-tuned on CCSD(T)"][0]), "--json"], check=True, env=ENV,
        capture_output=True, text=True).stdout)
    summary = {"models": results, "ledger_train": ledger, "n_dft": args.n_dft,
               "n_cc": args.n_cc, "n_test": args.n_test, "minutes": args.minutes,
               "date": time.ctime(), "wall_minutes": (time.time() - started) / 60}
    write_json(out / "results.json", summary)
    print("| model | labels | E RMSE (offset removed), meV/atom | F RMSE, meV/Å |")
    print("|---|---|---|---|")
    labels = {"A": f"{args.n_dft} DFT", "B": f"{args.n_dft} DFT + {args.n_cc} CCSD(T)",
              "C": f"{args.n_cc} CCSD(T) + xTB", "D": f"{args.n_cc} CCSD(T)",
              "E": f"{args.n_cc} CCSD(T) + DFT"}
    for name, r in results.items():
        print(f"| {name} | {labels[name[0]]} | {r['energy_rmse_offset_removed']:.2f} | "
              f"{r['force_rmse']:.1f} |")
    print()
    for level in ledger["levels"]:
        print(f"{level['level']}: {level['labels']} labels, {level['cpu_hours'] * 3600:.0f} CPU-s,"
              f" {level['cpu_seconds_per_label']:.2f} CPU-s per label, model "
              f"{level.get('speedup', float('nan')):.0f}x faster")


if __name__ == "__main__":
    main()
