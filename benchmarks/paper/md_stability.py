#!/usr/bin/env python
"""MD stability as part of accuracy (issue 19, item 5): NVT MD from several starts, time to
the first failure.

    .venv/bin/python benchmarks/paper/md_stability.py MODEL STARTS.xyz --temperatures 300,500 \
        --starts 5 --ps 10 --out benchmarks/out/md_stability/NAME.json [--mace]

``MODEL`` is an mlpot model folder (or, with ``--mace``, a MACE ``.model`` file run through
MACE's own calculator in the MACE venv's Python). From each of ``--starts`` frames spread over
``STARTS.xyz``: velocities at the temperature (seeded), Bussi NVT (``mlpot.dynamics``'s
integrator, τ = 100 steps), 0.5 fs steps for ``--ps`` ps. A run fails at the first step where
two atoms are closer than 0.6 Å or a bond of the start geometry (covalent radii × 1.2) is
stretched past twice its starting length; checked every 10 steps (5 fs). Results: per
temperature and start, the time of failure (ps) or None, and survivors.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import write_json

CHECK_EVERY = 10  # steps
MIN_DISTANCE = 0.6  # Å
STRETCH = 2.0  # × the bond's starting length


def bonds_of(atoms) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs (i < j) of a geometry (distance below 1.2 × the sum of covalent radii)
    and their lengths, Å."""
    from ase.data import covalent_radii

    distances = atoms.get_all_distances()
    radii = covalent_radii[atoms.numbers]
    bonded = np.triu(distances < 1.2 * (radii[:, None] + radii[None, :]), k=1)
    pairs = np.argwhere(bonded)
    return pairs, distances[bonded]


def failed(atoms, pairs: np.ndarray, lengths: np.ndarray) -> str | None:
    distances = atoms.get_all_distances()
    np.fill_diagonal(distances, np.inf)
    if distances.min() < MIN_DISTANCE:
        return f"atoms {distances.min():.2f} Å apart"
    stretch = distances[pairs[:, 0], pairs[:, 1]] / lengths
    if stretch.max() > STRETCH:
        return f"bond stretched {stretch.max():.2f}×"
    return None


def run(calculator, start, temperature: float, steps: int, seed: int) -> dict:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    from mlpot.dynamics.integrators import make_dynamics

    atoms = start.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics, _ = make_dynamics(atoms, "nvt", 0.5, temperature, rng)
    pairs, lengths = bonds_of(start)
    clock = time.monotonic()
    for block in range(steps // CHECK_EVERY):
        dynamics.run(CHECK_EVERY)
        reason = failed(atoms, pairs, lengths)
        if reason:
            return {"failed_ps": (block + 1) * CHECK_EVERY * 0.0005, "reason": reason,
                    "seconds": round(time.monotonic() - clock, 1)}
    return {"failed_ps": None, "seconds": round(time.monotonic() - clock, 1),
            "steps_per_s": round(steps / (time.monotonic() - clock), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("starts_file")
    parser.add_argument("--temperatures", default="300,500")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--ps", type=float, default=10.0)
    parser.add_argument("--mace", action="store_true", help="MODEL is a MACE .model file")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ase.io import read

    if args.mace:
        from mace.calculators import MACECalculator

        calculator = MACECalculator(model_paths=args.model, device="cpu")
    else:
        import mlpot

        calculator = mlpot.Calculator(args.model)
    frames = [a for a in read(args.starts_file, ":") if len(a) > 1]
    chosen = np.linspace(0, len(frames) - 1, args.starts).round().astype(int)
    steps = int(round(args.ps / 0.0005))
    result = {"model": args.model, "starts_file": args.starts_file, "ps": args.ps,
              "dt_fs": 0.5, "thermostat": "Bussi, tau 50 fs", "runs": {}}
    for temperature in [float(t) for t in args.temperatures.split(",")]:
        runs = {}
        for k, index in enumerate(chosen):
            runs[int(index)] = run(calculator, frames[index], temperature, steps, seed=k)
            print(f"{temperature:g} K, start {index}: {runs[int(index)]}", flush=True)
        result["runs"][f"{temperature:g}K"] = {
            "starts": runs, "survivors": sum(r["failed_ps"] is None for r in runs.values())}
        write_json(args.out, result)


if __name__ == "__main__":
    main()
