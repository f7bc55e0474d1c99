"""Splits, per-element reference energies and label statistics of a list of frames."""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from mlpot.data.records import Frame
from mlpot.errors import DataError


def split_isolated_atoms(frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    """(isolated-atom frames, all other frames)."""
    isolated = [f for f in frames if f.is_isolated_atom]
    return isolated, [f for f in frames if not f.is_isolated_atom]


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Shuffle range(n) with ``seed`` and cut it into parts of the given fractions.

    The last part takes the remainder, so ``(0.05,)`` → [5 % validation, 95 % rest].
    Every non-zero fraction gets at least one item.
    """
    order = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for fraction in fractions:
        size = int(round(fraction * n))
        if fraction > 0:
            size = max(size, 1)
        parts.append(order[start:start + size])
        start += size
    parts.append(order[start:])
    return parts


def elements_of(frames: list[Frame]) -> list[int]:
    """Sorted atomic numbers present in the frames."""
    return sorted(set(np.concatenate([f.numbers for f in frames]).tolist()))


def isolated_atom_energies(isolated: list[Frame]) -> dict[str, float]:
    """E0 by symbol (eV) from single-atom frames."""
    energies = {}
    for frame in isolated:
        if len(frame.numbers) != 1 or frame.energy is None:
            raise DataError("isolated-atom frame must hold one atom and an energy",
                            source=frame.source, frame=frame.index, field="energy")
        energies[chemical_symbols[int(frame.numbers[0])]] = float(frame.energy)
    return energies


def fit_reference_energies(frames: list[Frame], elements: list[int]) -> dict[str, float]:
    """Least-squares E0 by symbol (eV): E_b ≈ Σ_Z n_{b,Z} E0(Z) over the frames.

    Elements whose counts are collinear (e.g. always present in a fixed ratio, as in a
    single molecule) get the minimum-norm solution, which is exact for such data.
    """
    counts = np.array([[np.sum(f.numbers == z) for z in elements] for f in frames], dtype=float)
    energies = np.array([f.energy for f in frames], dtype=float)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {chemical_symbols[z]: float(e) for z, e in zip(elements, solution)}


def reference_energies(frames: list[Frame], elements: list[int],
                       isolated: list[Frame] | None = None) -> tuple[dict[str, float], str]:
    """E0 by symbol and where it came from: isolated atoms where they cover every element,
    else a least-squares fit over ``frames``."""
    if isolated:
        energies = isolated_atom_energies(isolated)
        if all(chemical_symbols[z] in energies for z in elements):
            return {chemical_symbols[z]: energies[chemical_symbols[z]] for z in elements}, \
                "isolated atoms"
    return fit_reference_energies(frames, elements), "least-squares fit"


def per_atom_energy_residuals(frames: list[Frame], e0: dict[str, float]) -> np.ndarray:
    """(E_b − Σ_i E0(Z_i)) / N_b for each frame, eV/atom."""
    return np.array([(f.energy - sum(e0[chemical_symbols[z]] for z in f.numbers)) / len(f)
                     for f in frames])


def force_rms(frames: list[Frame]) -> float:
    """Root mean square of all reference force components, eV/Å (0 if none)."""
    forces = [f.forces.ravel() for f in frames if f.forces is not None]
    return float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 0.0
