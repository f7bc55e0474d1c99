"""Cost of the long-range terms per MD step, relative to the short-range model alone.

A periodic box of water (default 343 molecules, 1029 atoms, 1 g/cm³, random orientations),
bpnn (medium) with: nothing, learned Coulomb (PME at this size), learned dispersion (15 Å
pair sum), and both; one MD step = energy + forces (+ stress) through the ASE calculator, as
`mlpot md` calls it. Weights are untrained (cost does not depend on them).

    python benchmarks/long_range_cost.py [--molecules 343] [--repeats 5] [--dtype float64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

from mlpot.config import config_from_dict
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.train.run import build_potential


def water_box(n_side: int, seed: int = 0) -> Atoms:
    """n_side³ water molecules on a cubic lattice at 1 g/cm³, randomly rotated."""
    rng = np.random.default_rng(seed)
    spacing = (18.015 / 6.022e23 / 1.0 * 1e24) ** (1 / 3)  # Å per molecule at 1 g/cm³
    box = Atoms(cell=np.eye(3) * spacing * n_side, pbc=True)
    water = molecule("H2O")
    for index in np.ndindex(n_side, n_side, n_side):
        copy = water.copy()
        copy.rotate(rng.uniform(0, 360), rng.normal(size=3))
        copy.translate((np.array(index) + 0.5) * spacing)
        box += copy
    return box


def time_calls(atoms: Atoms, calculator, repeats: int, stress: bool) -> float:
    """Median seconds per energy+forces(+stress) call on slightly moved positions."""
    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.get_forces()  # warm-up
    seconds = []
    rng = np.random.default_rng(1)
    for _ in range(repeats):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()
        if stress:
            atoms.get_stress()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=7, help="molecules per box edge")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    atoms = water_box(args.side)
    results = {}
    for long_range in ("none", "coulomb", "dispersion", "both"):
        config = config_from_dict({"data": {"train": "unused.xyz"},
                                   "model": {"kind": "bpnn", "size": "medium",
                                             "long_range": long_range}})
        potential = build_potential(config, [1, 8], {"H": 0.0, "O": 0.0}).eval()
        calculator = MlpotCalculator(potential, dtype=args.dtype)
        results[long_range] = time_calls(atoms, calculator, args.repeats, args.stress)
        print(f"{long_range:>10}: {results[long_range] * 1e3:8.1f} ms per step "
              f"({results[long_range] / results['none']:.2f}x short-range)", flush=True)
    print(json.dumps({"n_atoms": len(atoms), "dtype": args.dtype, "stress": args.stress,
                      "threads": args.threads, "seconds": results}))


if __name__ == "__main__":
    main()
