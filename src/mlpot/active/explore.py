"""Exploration: short Langevin trajectories with the model, watching its epistemic σ (or,
given a pool of unlabelled structures, the model's σ on each of them).

Each trajectory starts from a given structure, runs ``steps`` steps at ``temperature`` with
the model's forces and keeps a snapshot every ``interval`` steps together with its largest
per-atom epistemic force σ (norm over x, y, z; eV/Å). A trajectory ends early when σ passes
``stop_sigma`` (the model is lost: later snapshots would be nonsense) or two atoms come
closer than ``min_distance`` Å (that snapshot is dropped).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin

from mlpot.dynamics.md import thermalize


def largest_force_sigma(atoms: Atoms) -> float:
    """max_i |σ_F,i| of the attached calculator's epistemic force σ, eV/Å."""
    sigma = atoms.calc.results["forces_std_epistemic"]
    return float(np.linalg.norm(sigma, axis=1).max())


def explore(calculator, starts: list[Atoms], temperature: float, steps: int, dt: float,
            interval: int, friction: float, stop_sigma: float, seed: int,
            min_distance: float = 0.6) -> tuple[list[Atoms], np.ndarray]:
    """Snapshots of every trajectory and their largest epistemic force σ (eV/Å)."""
    rng = np.random.default_rng(seed)
    snapshots, sigmas = [], []
    for start in starts:
        atoms = start.copy()
        atoms.calc = calculator
        thermalize(atoms, temperature_K=temperature, rng=rng)
        dynamics = Langevin(atoms, dt * units.fs, temperature_K=temperature,
                            friction=friction / units.fs, rng=rng)
        for _ in range(max(steps // interval, 1)):
            dynamics.run(interval)
            distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
            if len(atoms) > 1 and distances[np.triu_indices(len(atoms), 1)].min() < min_distance:
                break
            atoms.get_forces()
            sigma = largest_force_sigma(atoms)
            snapshot = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                             pbc=atoms.pbc, info={k: v for k, v in start.info.items()
                                                  if k in ("charge", "spin", "multiplicity")})
            snapshots.append(snapshot)
            sigmas.append(sigma)
            if sigma > stop_sigma:
                break
    return snapshots, np.asarray(sigmas)


def pool_sigmas(model, structures: list[Atoms], batch_size: int = 32) -> np.ndarray:
    """Largest per-atom epistemic force σ (eV/Å) of ``model`` on every pool structure
    (query by committee over candidates one already has, e.g. cheap MD snapshots)."""
    import torch

    from mlpot.data.records import frame_from_atoms
    from mlpot.train.metrics import predict

    frames = []
    for k, atoms in enumerate(structures):
        frame = frame_from_atoms(atoms, source="<pool>", index=k)
        frame.energy = frame.forces = frame.stress = frame.dipole = None
        frames.append(frame)
    with torch.enable_grad():
        predicted = predict(model, frames, batch_size=batch_size)
    return np.array([float(np.linalg.norm(sigma, axis=1).max())
                     for sigma in predicted["forces_std_epistemic"]])
