"""Splits, per-element reference energies and label statistics of a sequence of frames.

Frames are a list in memory or a lazy on-disk sequence (:mod:`mlpot.data.lazy`); the
statistics use per-frame columns (energies, compositions, Σ F²), which the lazy sequences
compute chunk by chunk from the file, so that both give the same numbers to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

from mlpot.data.lazy import is_lazy, square_sum
from mlpot.data.records import Frame
from mlpot.errors import DataError


def take(frames: Sequence[Frame], indices) -> Sequence[Frame]:
    """The frames at ``indices``, in that order: a list for a list, a lazy view for on-disk
    frames (nothing is read)."""
    if is_lazy(frames):
        return frames[np.asarray(indices, dtype=np.int64)]
    return [frames[k] for k in indices]


def split_isolated_atoms(frames: Sequence[Frame]) -> tuple[list[Frame], Sequence[Frame]]:
    """(isolated-atom frames, all other frames)."""
    if is_lazy(frames):
        mask = frames.isolated_mask()
        return list(take(frames, np.flatnonzero(mask))), take(frames, np.flatnonzero(~mask))
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


def elements_of(*frame_sets: Sequence[Frame]) -> list[int]:
    """Sorted atomic numbers present in the frames (of one or several sequences)."""
    present = set()
    for frames in frame_sets:
        if is_lazy(frames):
            present.update(frames.elements())
        else:
            present.update(z for f in frames for z in np.unique(f.numbers).tolist())
    return sorted(present)


def energies(frames: Sequence[Frame]) -> np.ndarray:
    """(n,) reference energies, eV (NaN where missing)."""
    if is_lazy(frames):
        return frames.energies()
    return np.array([np.nan if f.energy is None else f.energy for f in frames], dtype=float)


def atom_counts(frames: Sequence[Frame]) -> np.ndarray:
    """(n,) atoms per frame."""
    if is_lazy(frames):
        return frames.n_atoms()
    return np.array([len(f) for f in frames], dtype=np.int64)


def compositions(frames: Sequence[Frame], elements: list[int]) -> np.ndarray:
    """(n, len(elements)) atoms of each element in every frame."""
    if is_lazy(frames):
        return frames.compositions(elements)
    return np.array([[np.sum(f.numbers == z) for z in elements] for f in frames],
                    dtype=np.int64).reshape(len(frames), len(elements))


def isolated_atom_energies(isolated: list[Frame]) -> dict[str, float]:
    """E0 by symbol (eV) from single-atom frames."""
    energies = {}
    for frame in isolated:
        if len(frame.numbers) != 1 or frame.energy is None:
            raise DataError("isolated-atom frame must hold one atom and an energy",
                            source=frame.source, frame=frame.index, field="energy")
        energies[chemical_symbols[int(frame.numbers[0])]] = float(frame.energy)
    return energies


def fit_reference_energies(frames: Sequence[Frame], elements: list[int],
                           known: dict[str, float] | None = None) -> dict[str, float]:
    """Least-squares E0 by symbol (eV): E_b ≈ Σ_Z n_{b,Z} E0(Z) over the frames; the E0 in
    ``known`` (by symbol) are kept and the others fitted to what they leave.

    Elements whose counts are collinear (e.g. always present in a fixed ratio, as in a
    single molecule) get the minimum-norm solution, which is exact for such data.
    """
    known = known or {}
    fixed = [z for z in elements if chemical_symbols[z] in known]
    free = [z for z in elements if chemical_symbols[z] not in known]
    left = energies(frames) - compositions(frames, fixed) @ np.array(
        [known[chemical_symbols[z]] for z in fixed], dtype=float)
    solution, *_ = np.linalg.lstsq(compositions(frames, free).astype(float), left, rcond=None)
    e0 = known | {chemical_symbols[z]: float(e) for z, e in zip(free, solution)}
    return {chemical_symbols[z]: e0[chemical_symbols[z]] for z in elements}


def reference_energies(frames: Sequence[Frame], elements: list[int],
                       isolated: list[Frame] | None = None) -> tuple[dict[str, float], str]:
    """E0 by symbol and where it came from: isolated atoms for the elements they cover
    (e.g. an isolated ion of the data's level), a least-squares fit over ``frames`` of the
    rest (on the energies left after the covered elements' E0)."""
    known = isolated_atom_energies(isolated) if isolated else {}
    known = {chemical_symbols[z]: known[chemical_symbols[z]] for z in elements
             if chemical_symbols[z] in known}
    if len(known) == len(elements):
        return known, "isolated atoms"
    e0 = fit_reference_energies(frames, elements, known)
    if not known:
        return e0, "least-squares fit"
    fitted = [symbol for symbol in e0 if symbol not in known]
    return e0, (f"isolated atoms ({', '.join(known)}) and a least-squares fit "
                f"({', '.join(fitted)})")


def per_atom_energy_residuals(frames: Sequence[Frame], e0: dict[str, float]) -> np.ndarray:
    """(E_b − Σ_i E0(Z_i)) / N_b for each frame, eV/atom."""
    symbols = sorted(e0)
    elements = [chemical_symbols.index(s) for s in symbols]
    reference = compositions(frames, elements) @ np.array([e0[s] for s in symbols])
    return (energies(frames) - reference) / atom_counts(frames)


def force_rms(frames: Sequence[Frame]) -> float:
    """Root mean square of all reference force components, eV/Å (0 if none)."""
    if is_lazy(frames):
        has, squares = frames.has_forces(), frames.force_squares()
    else:
        has = np.array([f.forces is not None for f in frames], dtype=bool)
        squares = np.array([square_sum(f.forces) if f.forces is not None else 0.0
                            for f in frames])
    n_components = 3 * int(atom_counts(frames)[has].sum()) if len(has) else 0
    return float(np.sqrt(np.sum(squares[has]) / n_components)) if n_components else 0.0
