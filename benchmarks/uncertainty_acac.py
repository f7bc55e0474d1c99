#!/usr/bin/env python
"""Uncertainty on acac: deep ensembles with variance heads, on clean and on noisy labels.

    .venv/bin/python benchmarks/uncertainty_acac.py --members 4 --minutes 3 \
        [--noise-force 0.15 --noise-energy 0.005] [--out benchmarks/out/uncertainty_acac]

Two ensembles train at once (one thread each): ``clean`` on train_300K as it is, ``noisy`` on
train_300K with Gaussian noise of known σ added to every force component (``--noise-force``,
eV/Å) and every energy (``--noise-energy`` eV/atom × N). Both are bpnn ensembles of
``--members`` members with aleatoric variance heads, ``--minutes`` per member, recalibrated on
their validation split. Each is scored on test_MD_300K (in distribution), test_MD_600K and
test_H_transfer (out of distribution): errors, epistemic and aleatoric σ, Spearman(σ, |error|)
per structure on the union of the three sets (energies; force RMS where there are forces),
each next to what errors drawn from the model's own σ would give, NLL and miscalibration area. Then the cost of one
energy+forces call (acac, float64) of a single member against ensembles of 4 and 8.
Writes OUT/results.json and prints Markdown tables.
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

from common import ACAC as DATA, OUT, write_json

TESTS = ["test_MD_300K", "test_MD_600K", "test_H_transfer"]


def noisy_copy(source: Path, target: Path, sigma_force: float, sigma_energy: float,
               seed: int = 0) -> None:
    """extxyz with Gaussian noise added to energies (σ_E per atom × N) and forces (σ_F)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    rng = np.random.default_rng(seed)
    frames = read(source, index=":")
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        energy += rng.normal(0, sigma_energy * len(atoms))
        forces = forces + rng.normal(0, sigma_force, forces.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    write(target, frames, format="extxyz")


def config(out: Path, train: Path, members: int, minutes: float | None, epochs: int | None,
           beta: float, kind: str = "bpnn", seed: int = 0) -> Path:
    """Training YAML (OUT.yaml for the run folder OUT): ``epochs`` per member when given
    (load-independent), else ``minutes``."""
    import yaml

    path = out.with_suffix(".yaml")
    budget = ({"max_minutes": None, "max_epochs": epochs} if epochs
              else {"max_minutes": minutes})
    path.write_text(yaml.safe_dump({
        "data": {"train": str(train), "isolated_atoms": str(DATA / "isolated_atoms.xyz"),
                 "test": [str(DATA / f"{name}.xyz") for name in TESTS]},
        "model": {"kind": kind},
        "training": {**budget, "ensemble": members, "aleatoric": True, "beta_nll": beta,
                     "threads": 1, "patience": 100000},
        "seed": seed, "out": str(out)}))
    return path


def union_scores(scored: list[tuple]) -> dict:
    """Spearman per structure over the test sets together, from (frames, predicted) pairs:
    energy per atom against the total and the epistemic σ, RMS force error against the
    total and the epistemic RMS force σ (sets with forces), each with the value errors drawn
    from the model's own σ would give (``spearman_reference``)."""
    from mlpot.uncertainty.calibration import (ensemble_errors, spearman, spearman_reference,
                                               structure_force_errors)

    parts: dict[str, list] = {key: [] for key in (
        "e_error", "e_total", "e_epistemic", "f_error", "f_total", "f_epistemic", "f_n")}
    for frames, predicted in scored:
        error, sigma = ensemble_errors(frames, predicted)["energy"]
        parts["e_error"].append(error)
        parts["e_total"].append(sigma)
        parts["e_epistemic"].append(np.asarray(predicted["energy_std_epistemic"])
                                    / [len(f) for f in frames])
        forces = structure_force_errors(frames, predicted)
        if forces is not None:
            parts["f_error"].append(forces[0])
            parts["f_total"].append(forces[1])
            parts["f_n"].append(forces[2])
            epistemic = {**predicted, "forces_std": predicted["forces_std_epistemic"]}
            parts["f_epistemic"].append(structure_force_errors(frames, epistemic)[1])
    v = {key: np.concatenate(value) for key, value in parts.items()}
    return {"energy_total": spearman(v["e_total"], v["e_error"]),
            "energy_epistemic": spearman(v["e_epistemic"], v["e_error"]),
            "energy_reference": spearman_reference(v["e_total"]),
            "force_structure_total": spearman(v["f_total"], v["f_error"]),
            "force_structure_epistemic": spearman(v["f_epistemic"], v["f_error"]),
            "force_structure_reference": spearman_reference(v["f_total"], v["f_n"])}


def union_spearman(model: Path) -> dict:
    """``union_scores`` of a saved model over the three test sets."""
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import predict
    from mlpot.uncertainty.ensemble import load_model

    ensemble = load_model(model)
    scored = []
    for name in TESTS:
        frames = read_frames(DATA / f"{name}.xyz")
        scored.append((frames, predict(ensemble, frames)))
    return union_scores(scored)


def cost(model: Path) -> dict:
    """ms per energy+forces call on one acac molecule: a member, ensembles of 4 and 8."""
    import torch
    from ase.io import read

    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.uncertainty.ensemble import Ensemble, load_model

    torch.set_num_threads(1)
    ensemble = load_model(model)
    member = ensemble.members[0]
    atoms = read(DATA / "test_MD_300K.xyz", index=0)
    result = {}
    for name, potential in [("single", member), ("ensemble_4", Ensemble([member] * 4)),
                            ("ensemble_8", Ensemble([member] * 8))]:
        atoms.calc = MlpotCalculator(potential)
        rng = np.random.default_rng(0)
        base = atoms.positions.copy()
        for _ in range(5):
            atoms.positions = base + rng.normal(0, 1e-3, base.shape)
            atoms.get_forces()
        started = time.perf_counter()
        for _ in range(50):
            atoms.positions = base + rng.normal(0, 1e-3, base.shape)
            atoms.get_forces()
        result[name] = (time.perf_counter() - started) / 50 * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per member instead of --minutes (independent of load)")
    parser.add_argument("--beta", type=float, default=0.5, help="β-NLL exponent")
    parser.add_argument("--noise-force", type=float, default=0.15, help="eV/Å")
    parser.add_argument("--noise-energy", type=float, default=0.005, help="eV/atom")
    parser.add_argument("--out", default=str(OUT / "uncertainty_acac"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    noisy = out / "train_300K_noisy.xyz"
    noisy_copy(DATA / "train_300K.xyz", noisy, args.noise_force, args.noise_energy)
    runs = {"clean": DATA / "train_300K.xyz", "noisy": noisy}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = {name: subprocess.Popen([sys.executable, "-m", "mlpot", "train",
                                    str(config(out / name, train, args.members, args.minutes,
                                               args.epochs, args.beta))],
                                   env=env, stdout=open(out / f"{name}.log", "w"),
                                   stderr=subprocess.STDOUT)
            for name, train in runs.items()}
    for name, job in jobs.items():
        if job.wait() != 0:
            sys.exit(f"{name} failed; see {out / (name + '.log')}")
    results = {"members": args.members, "minutes_per_member": args.minutes, "epochs_per_member": args.epochs,
               "beta_nll": args.beta,
               "noise": {"force_eV_per_A": args.noise_force, "energy_eV_per_atom":
                         args.noise_energy}, "date": time.ctime()}
    for name in runs:
        summary = json.loads((out / name / "metrics.json").read_text())
        results[name] = {"metrics": summary["metrics"],
                         "recalibration": summary.get("recalibration"),
                         "spearman_union": union_spearman(out / name / "model")}
    results["cost_ms_per_call"] = cost(out / "clean" / "model")
    write_json(out / "results.json", results)
    print(markdown(results))


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    lines = ["| labels | test set | E / F RMSE | F σ epistemic | F σ aleatoric | "
             "Spearman E / F | NLL F | miscal. area F |", "|---" * 8 + "|"]
    for name in ("clean", "noisy"):
        for test in TESTS:
            m = results[name]["metrics"][test]
            force = m.get("force_rmse")
            lines.append(
                f"| {name} | {test} | {fmt(m['energy_rmse'])} / {fmt(force, 1)} | "
                f"{fmt(m.get('force_sigma_epistemic'), 1)} | "
                f"{fmt(m.get('force_sigma_aleatoric'), 1)} | "
                f"{fmt(m.get('spearman_energy'))} / {fmt(m.get('spearman_force'))} | "
                f"{fmt(m.get('nll'))} | {fmt(m.get('miscalibration_area_force'), 3)} |")
        u = results[name]["spearman_union"]
        lines.append(f"| {name} | union, per structure: E total / epistemic σ (calibrated "
                     f"reference) | | | | {fmt(u['energy_total'])} / "
                     f"{fmt(u['energy_epistemic'])} ({fmt(u['energy_reference'])}) | | |")
        lines.append(f"| {name} | union, per structure: F RMS total / epistemic σ "
                     f"(calibrated reference) | | | | {fmt(u['force_structure_total'])} / "
                     f"{fmt(u['force_structure_epistemic'])} "
                     f"({fmt(u['force_structure_reference'])}) | | |")
    lines.append("")
    lines.append("ms per energy+forces call (acac, float64, 1 thread): " + ", ".join(
        f"{k} {v:.1f}" for k, v in results["cost_ms_per_call"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
