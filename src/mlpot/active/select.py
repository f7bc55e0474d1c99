"""Which explored structures to label: uncertain ones, and no near-duplicates.

A structure's fingerprint is its sorted list of interatomic distances (Å): invariant to
translation, rotation and permutation of atoms, cheap, and good enough to tell apart
snapshots of one molecule's dynamics. Two structures of the same composition are near
duplicates when the RMS difference of their fingerprints is below ``min_distance``.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def fingerprint(atoms: Atoms) -> np.ndarray:
    """Sorted interatomic distances (minimum image for periodic cells), Å."""
    distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    upper = np.triu_indices(len(atoms), 1)
    return np.sort(distances[upper])


def _composition(atoms: Atoms) -> tuple:
    return tuple(sorted(atoms.numbers.tolist()))


def select(candidates: list[Atoms], sigmas: np.ndarray, known: list[Atoms], threshold: float,
           max_new: int, min_distance: float) -> list[int]:
    """Indices of at most ``max_new`` candidates with σ > ``threshold``, most uncertain
    first, none within ``min_distance`` (Å, fingerprint RMS) of a known structure or of one
    already chosen."""
    chosen: list[int] = []
    kept = {}
    for atoms in known:
        kept.setdefault(_composition(atoms), []).append(fingerprint(atoms))
    for index in np.argsort(-np.asarray(sigmas), kind="stable"):
        if len(chosen) >= max_new or sigmas[index] <= threshold:
            break
        atoms = candidates[index]
        candidate = fingerprint(atoms)
        others = kept.setdefault(_composition(atoms), [])
        if any(np.sqrt(np.mean((candidate - other) ** 2)) < min_distance for other in others):
            continue
        chosen.append(int(index))
        others.append(candidate)
    return chosen
