#!/usr/bin/env python
"""Independent GFN2-xTB trajectories of one molecule: a training trajectory and test
trajectories drawn differently from it (issue 19, item 3).

    .venv/bin/python benchmarks/paper/xtb_trajectories.py ethanol malonaldehyde \
        --out benchmarks/out/xtb_md

For each molecule (start geometry: frame 0 / frame 500 of rMD17's ``<mol>_train_01.npz``),
ASE Langevin MD (1 fs, friction 0.01/fs) with tblite's GFN2-xTB, every frame labelled by the
same calculation that drove it:

- ``train_300K.xyz``: 500 frames, one every 10 fs of a 5 ps trajectory after 1 ps of
  equilibration (seed 1);
- ``test_300K.xyz``: 200 frames of an independent trajectory at the same temperature (another
  start, other velocities and noise: seed 2), one every 10 fs after 1 ps;
- ``test_600K.xyz``: 200 frames of a third trajectory at twice the temperature (seed 3).

A file already written is kept (rerunning continues with the next one). Energies in eV, forces
in eV/Å (extxyz keys energy / forces).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import SHARED_DATA

DATA = SHARED_DATA / "rmd17"
TRAJECTORIES = {  # name: (temperature K, seed, start frame of the rMD17 file, frames kept)
    "train_300K": (300.0, 1, 0, 500),
    "test_300K": (300.0, 2, 500, 200),
    "test_600K": (600.0, 3, 500, 200),
}
EQUILIBRATION_STEPS = 1000  # 1 ps
EVERY = 10  # steps between kept frames (10 fs)


def start_geometry(molecule: str, frame: int):
    from ase import Atoms

    data = np.load(DATA / f"rmd17_{molecule}_train_01.npz")
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][frame])


def trajectory(molecule: str, temperature: float, seed: int, start: int, frames: int) -> list:
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tblite.ase import TBLite

    atoms = start_geometry(molecule, start)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dynamics = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                        rng=rng)
    dynamics.run(EQUILIBRATION_STEPS)
    kept, clock = [], time.monotonic()
    for index in range(frames):
        dynamics.run(EVERY)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        kept.append(frame)
        if (index + 1) % 50 == 0:
            print(f"  {index + 1}/{frames} frames, {time.monotonic() - clock:.0f} s", flush=True)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("molecules", nargs="+", help="rMD17 names, e.g. ethanol malonaldehyde")
    parser.add_argument("--out", default="benchmarks/out/xtb_md")
    args = parser.parse_args()
    from ase.io import write

    for molecule in args.molecules:
        folder = Path(args.out) / molecule
        folder.mkdir(parents=True, exist_ok=True)
        for name, (temperature, seed, start, frames) in TRAJECTORIES.items():
            path = folder / f"{name}.xyz"
            if path.exists():
                continue
            print(f"{molecule} {name}: {temperature:g} K, seed {seed}", flush=True)
            kept = trajectory(molecule, temperature, seed, start, frames)
            temporary = path.with_suffix(".tmp.xyz")
            write(temporary, kept, format="extxyz")
            temporary.rename(path)


if __name__ == "__main__":
    main()
