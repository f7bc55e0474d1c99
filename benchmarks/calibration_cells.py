#!/usr/bin/env python
"""Is the recalibrated ensemble σ sane with only 3 validation frames? Small periodic cells.

    .venv/bin/python benchmarks/calibration_cells.py [--out benchmarks/out/calib_cells]
        [--minutes 2] [--results benchmarks/results/calibration/cells.json]

1. Reference data: rattled, strained fcc Cu–Al cells of 4, 8, 12 or 16 atoms (a 3.6–3.8 Å,
   up to half the sites Al), labelled by ASE's EMT (energy, forces, stress), written as extxyz:
   60 training cells (the default valid_fraction 0.05 keeps 3 of them for validation, where
   the σ calibration is fitted) and an independent test set of 40 cells (another seed).
2. `mlpot train --train cells.xyz --test test.xyz --ensemble 2 --max-minutes MIN` (defaults
   otherwise: a bpnn, 5 Å).
3. Reported on the test cells: force RMSE, mean epistemic force σ per component and its ratio
   to the RMSE, NLL against that of a constant σ equal to the validation force RMSE,
   miscalibration area, and the largest atomic force σ per structure (what
   `mlpot md --max-force-sigma` compares); the calibration fit (observations, shrinkage and its
   warning). Then `mlpot md` from the first 16-atom test cell, Langevin at 300 K for 400 steps
   (the σ watchdog checks every 10 steps; the run flags and goes on), and from its record, for
   --max-force-sigma 0.5 eV/Å and 3× the mean largest atomic σ on the test cells: how many of
   the 41 checks exceed it, and the step where --on-uncertain stop would have stopped.
Finished steps are reused (delete OUT to start again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import OUT, RESULTS, ROOT, write_json

REPLICAS = [(1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 1)]  # 4, 8, 12, 16 atoms
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def emt_cells(n: int, seed: int) -> list:
    """``n`` rattled (0.08 Å), strained (±3 %) fcc Cu–Al cells of 4–16 atoms with EMT labels
    (a SinglePointCalculator each: energy eV, forces eV/Å, stress eV/Å³)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    cells = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.8), cubic=True)
        atoms *= REPLICAS[rng.integers(len(REPLICAS))]
        n_al = rng.integers(0, len(atoms) // 2 + 1)
        atoms.numbers[rng.choice(len(atoms), size=n_al, replace=False)] = 13
        strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.rattle(0.08, seed=seed * 1000 + k)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                      stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        cells.append(atoms)
    return cells


def reference_data(out: Path) -> dict[str, Path]:
    """cells.xyz (60 training cells) and test.xyz (40 test cells) in ``out``, made once."""
    from ase.io import write

    paths = {"train": out / "cells.xyz", "test": out / "test.xyz"}
    if not all(p.exists() for p in paths.values()):
        out.mkdir(parents=True, exist_ok=True)
        write(paths["train"], emt_cells(60, seed=1))
        write(paths["test"], emt_cells(40, seed=2))
    return paths


def mlpot(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run the mlpot CLI of this checkout (its output to ``log`` too, where given)."""
    run = subprocess.run([sys.executable, "-m", "mlpot", *args], capture_output=True,
                         text=True, env=ENV)
    if log is not None:
        log.write_text(run.stdout + run.stderr)
    return run


def train(out: Path, paths: dict[str, Path], minutes: float) -> Path:
    """The default 2-member ensemble on the 60 cells; returns its run folder."""
    run = out / "ensemble"
    if not (run / "metrics.json").exists():
        done = mlpot("train", "--train", str(paths["train"]), "--test", str(paths["test"]),
                     "--ensemble", "2", "--max-minutes", str(minutes), "--seed", "0",
                     "--out", str(run), log=out / "train.log")
        if done.returncode != 0:
            sys.exit(f"training failed, see {out / 'train.log'}")
    return run


def md(out: Path, model: Path, cell: Path, thresholds: list[float], steps: int = 400,
       ensemble: str = "langevin") -> list[dict]:
    """One `mlpot md` run at 300 K that flags (--on-uncertain flag) and goes on; its watchdog
    record (the largest atomic epistemic force σ at every 10th step) says, for each of
    ``thresholds`` (eV/Å), how many checks exceed it and at which step a run with
    --on-uncertain stop (the same trajectory up to there: same seed) would have stopped."""
    name = f"md_{ensemble}_{thresholds[0]:.3g}_flag"
    summary = out / f"{name}.json"
    if not summary.exists():
        run = mlpot("md", str(model), str(cell), "--steps", str(steps), "--ensemble", ensemble,
                    "--temperature", "300", "--max-force-sigma", f"{thresholds[0]:.6g}",
                    "--on-uncertain", "flag", "--out", str(out / f"{name}.traj"),
                    log=out / f"{name}.log")
        if not summary.exists():
            sys.exit(f"mlpot md wrote no summary (exit {run.returncode}), see {name}.log")
    result = json.loads(summary.read_text())
    watched = np.array(result["max_force_sigma_eV_per_A"])
    interval = steps // (len(watched) - 1)
    rows = []
    for threshold in thresholds:
        above = np.flatnonzero(watched > threshold)
        rows.append({"ensemble": ensemble, "max_force_sigma_eV_per_A": threshold,
                     "steps": steps, "checks": len(watched), "checks_above": len(above),
                     "stop_would_be_at_step": int(above[0] * interval) if len(above) else None,
                     "largest_atomic_sigma_mean_eV_per_A": float(watched.mean()),
                     "largest_atomic_sigma_max_eV_per_A": float(watched.max()),
                     "mean_temperature_K": result["mean_temperature_K"]})
    return rows


def analyse(run: Path, paths: dict[str, Path], out: Path) -> dict:
    from ase.io import read, write

    summary = json.loads((run / "metrics.json").read_text())
    keys = ("n_structures", "force_rmse", "force_sigma_epistemic", "force_sigma_over_rmse",
            "nll", "nll_constant_sigma", "miscalibration_area_force", "force_sigma_max_atom",
            "force_sigma_max_atom_p95", "energy_rmse")
    metrics = {name: {k: m.get(k) for k in keys} for name, m in summary["metrics"].items()}
    fit = summary["recalibration"]["forces"]
    calibration = {k: fit.get(k) for k in ("observations", "scale", "scale_fitted", "shrinkage",
                                           "exponent", "floor", "atom_weight", "warning",
                                           "miscalibration_area_before",
                                           "miscalibration_area_after", "nll_before",
                                           "nll_after", "rmse", "mean_sigma_after")}
    test = metrics[paths["test"].stem]
    cells = read(paths["test"], index=":")
    first = next(k for k, atoms in enumerate(cells) if len(atoms) == 16)
    cell = out / "md_cell.xyz"
    write(cell, cells[first])
    model = run / "model"
    three_times = 3 * test["force_sigma_max_atom"] / 1000
    runs = [row for ensemble in ("langevin", "nve")
            for row in md(out, model, cell, [0.5, three_times], ensemble=ensemble)]
    return {"metrics": metrics, "calibration_forces": calibration,
            "md_cell": f"test.xyz frame {first} (16 atoms)", "md": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT / "calib_cells"))
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--results", default=str(RESULTS / "calibration" / "cells.json"))
    args = parser.parse_args()
    out = Path(args.out)
    paths = reference_data(out)
    result = {"data": "EMT Cu–Al fcc cells of 4–16 atoms: 60 training (3 validation), 40 test",
              "command": "mlpot train --train cells.xyz --test test.xyz --ensemble 2 "
                         f"--max-minutes {args.minutes:g} --seed 0",
              **analyse(train(out, paths, args.minutes), paths, out)}
    write_json(args.results, result, newline=True)
    for name, m in result["metrics"].items():
        print(f"{name:>6}: force RMSE {m['force_rmse']:.1f}, σ {m['force_sigma_epistemic']:.1f} "
              f"meV/Å (σ/RMSE {m['force_sigma_over_rmse'] or float('nan'):.2f}), NLL "
              f"{m['nll']:.3g} (constant σ {m['nll_constant_sigma'] or float('nan'):.3g}), area "
              f"{m['miscalibration_area_force']:.3f}, largest atomic σ "
              f"{m['force_sigma_max_atom']:.1f} (95 %: {m['force_sigma_max_atom_p95']:.1f})")
    print("calibration:", json.dumps(result["calibration_forces"]))
    for row in result["md"]:
        print(f"md {row['ensemble']} --max-force-sigma {row['max_force_sigma_eV_per_A']:.3g}: "
              f"a stop run would stop at step {row['stop_would_be_at_step']}, "
              f"{row['checks_above']}/{row['checks']} checks above; largest atomic σ mean "
              f"{row['largest_atomic_sigma_mean_eV_per_A']:.3f}, max "
              f"{row['largest_atomic_sigma_max_eV_per_A']:.3f} eV/Å")


if __name__ == "__main__":
    main()
