#!/usr/bin/env python
"""Does the epistemic force σ rise where the error rises? Ethanol, GFN2-xTB labels.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibration_hot.py [--out benchmarks/out/calib_hot]
        [--minutes 0.5] [--results benchmarks/results/calibration/hot.json]

1. Reference data (ASE + tblite, Langevin, 0.5 fs): 200 training snapshots from four 300 K
   trajectories, and two independent test trajectories of 100 snapshots each, one at 300 K and
   one at 900 K (three times the training temperature).
2. A default 4-member bpnn ensemble (`mlpot train --ensemble 4`, ``--minutes`` per member,
   10 % of the training snapshots for validation, where the σ calibration is fitted).
3. On both test sets: force RMSE (mlpot.train.metrics) and mean epistemic force σ, raw (the
   members' plain spread per component — what a constant σ scale, the old recalibration,
   gives up to a factor that cancels in the ratio) and as calibrated (fitted again on the
   validation frames with the current method).
   Reported: σ(900 K)/σ(300 K) for both, against RMSE(900 K)/RMSE(300 K).
Finished steps are reused (delete OUT to start again).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import OUT, RESULTS, ROOT, write_json


def reference_data(out: Path) -> dict[str, Path]:
    """train.xyz (300 K), test_300K.xyz, test_900K.xyz in ``out``, made once."""
    from ase.io import write

    from active_learning_xtb import xtb_trajectory

    paths = {name: out / f"{name}.xyz" for name in ("train", "test_300K", "test_900K")}
    if all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    write(paths["test_900K"], xtb_trajectory(2500, 25, 101, 900.0))
    write(paths["test_300K"], xtb_trajectory(2500, 25, 100, 300.0))
    write(paths["train"], [f for seed in range(4) for f in xtb_trajectory(1250, 25, seed, 300.0)])
    return paths


def train(out: Path, paths: dict[str, Path], minutes: float, bootstrap: bool = False) -> Path:
    """The default 4-member ensemble (members on bootstrap resamples with ``bootstrap``);
    returns its model folder."""
    import yaml

    run = out / ("ensemble_bootstrap" if bootstrap else "ensemble")
    if not (run / "metrics.json").exists():
        config = run.with_suffix(".yaml")
        config.write_text(yaml.safe_dump({
            "data": {"train": str(paths["train"]),
                     "test": [str(paths["test_300K"]), str(paths["test_900K"])],
                     "valid_fraction": 0.1},
            "model": {"kind": "bpnn"},
            "training": {"ensemble": 4, "max_minutes": minutes, "threads": 1,
                         "bootstrap": bootstrap},
            "seed": 0, "out": str(run)}))
        with open(run.with_suffix(".log"), "w") as log:
            subprocess.run([sys.executable, "-m", "mlpot", "train", str(config)], check=True,
                           stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1",
                                "PYTHONPATH": str(ROOT / "src")})
    return run / "model"


def sigma_and_error(model, frames) -> dict:
    """Force RMSE and mean epistemic force σ (per component, meV/Å) of ``model``."""
    from mlpot.train.metrics import evaluate

    metrics, predicted = evaluate(model, frames)
    sigma = np.concatenate(predicted["forces_std_epistemic"]) * 1000
    return {"force_rmse": metrics["force_rmse"], "force_sigma": float(np.mean(sigma))}


def analyse(model_path: Path, paths: dict[str, Path]) -> dict:
    """Raw and calibrated σ against the error on both test sets. The calibration is fitted
    again on the run's validation frames (as `mlpot train` does), so that a finished run is
    scored with the current method."""
    from mlpot.config import load_config
    from mlpot.data.records import read_frames
    from mlpot.train.run import load_data, recalibrate
    from mlpot.uncertainty.calibration import SigmaCalibration
    from mlpot.uncertainty.ensemble import load_model

    calibrated = load_model(model_path)
    valid = list(load_data(load_config(model_path.parent.with_suffix(".yaml"), {}))["valid"])
    recalibrate(calibrated, valid)
    raw = load_model(model_path)
    raw.calibration_energy = raw.calibration_forces = SigmaCalibration()  # plain spread
    result = {"calibration_forces": calibrated.calibration_forces.to_json()}
    for name, model in (("raw_spread", raw), ("calibrated", calibrated)):
        rows = {t: sigma_and_error(model, read_frames(paths[t]))
                for t in ("test_300K", "test_900K")}
        result[name] = {**rows, "sigma_ratio": rows["test_900K"]["force_sigma"]
                        / rows["test_300K"]["force_sigma"],
                        "rmse_ratio": rows["test_900K"]["force_rmse"]
                        / rows["test_300K"]["force_rmse"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT / "calib_hot"))
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--results", default=str(RESULTS / "calibration" / "hot.json"))
    parser.add_argument("--data-only", action="store_true", help="only make the xTB data")
    parser.add_argument("--bootstrap", action="store_true",
                        help="members train on bootstrap resamples (mlpot train --bootstrap)")
    args = parser.parse_args()
    out = Path(args.out)
    paths = reference_data(out)
    if args.data_only:
        return
    result = {"molecule": "ethanol", "labels": "GFN2-xTB", "members": 4,
              "minutes_per_member": args.minutes, "bootstrap": args.bootstrap,
              **analyse(train(out, paths, args.minutes, args.bootstrap), paths)}
    write_json(args.results, result, newline=True)
    for name in ("raw_spread", "calibrated"):
        row = result[name]
        print(f"{name:>10}: σ 900K/300K {row['sigma_ratio']:.2f}   "
              f"RMSE 900K/300K {row['rmse_ratio']:.2f}   "
              f"(σ {row['test_300K']['force_sigma']:.1f} → {row['test_900K']['force_sigma']:.1f}, "
              f"RMSE {row['test_300K']['force_rmse']:.1f} → {row['test_900K']['force_rmse']:.1f} "
              f"meV/Å)")


if __name__ == "__main__":
    main()
