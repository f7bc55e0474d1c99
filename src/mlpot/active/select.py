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
           max_new: int, min_distance: float, strategy: str = "top",
           rng: np.random.Generator | None = None) -> list[int]:
    """Indices of at most ``max_new`` candidates with σ > ``threshold``, none within
    ``min_distance`` (Å, fingerprint RMS) of a known structure or of one already chosen.

    strategy "top": the most uncertain first. "weighted": a random draw without replacement
    with probability ∝ σ (uncertain structures are favoured, but the draw still follows where
    the candidates are dense instead of collecting the rarest outliers). "diverse": greedy,
    each pick maximises σ × (fingerprint distance to the nearest known or already chosen
    structure), so that one batch spreads over the uncertain region instead of piling up
    where σ peaks (uncertainty-weighted farthest-point sampling)."""
    sigmas = np.asarray(sigmas, dtype=float)
    if strategy == "diverse":
        return _select_diverse(candidates, sigmas, known, threshold, max_new, min_distance)
    if strategy == "top":
        order = np.argsort(-sigmas, kind="stable")
    elif strategy == "weighted":
        above = np.nonzero(sigmas > threshold)[0]
        rng = rng or np.random.default_rng(0)
        order = (rng.choice(above, size=len(above), replace=False,
                            p=sigmas[above] / sigmas[above].sum()) if len(above) else above)
    else:
        raise ValueError(f"strategy must be 'top', 'weighted' or 'diverse', not {strategy!r}")
    chosen: list[int] = []
    kept = {}
    for atoms in known:
        kept.setdefault(_composition(atoms), []).append(fingerprint(atoms))
    for index in order:
        if len(chosen) >= max_new:
            break
        if sigmas[index] <= threshold:
            continue
        atoms = candidates[index]
        candidate = fingerprint(atoms)
        others = kept.setdefault(_composition(atoms), [])
        if others and _distances(candidate[None], np.stack(others)).min() < min_distance:
            continue
        chosen.append(int(index))
        others.append(candidate)
    return chosen


def _select_diverse(candidates: list[Atoms], sigmas: np.ndarray, known: list[Atoms],
                    threshold: float, max_new: int, min_distance: float) -> list[int]:
    """Greedy σ × distance selection ("diverse" in ``select``); per composition, since only
    structures of one composition have comparable fingerprints. A candidate with no known or
    chosen structure of its composition is infinitely far: those go first, by σ."""
    index = np.nonzero(sigmas > threshold)[0]
    compositions = [_composition(candidates[k]) for k in index]
    own = [fingerprint(candidates[k]) for k in index]
    groups = {c: np.array([other == c for other in compositions]) for c in set(compositions)}
    prints = {c: np.stack([own[j] for j in np.nonzero(mask)[0]]) for c, mask in groups.items()}
    nearest = np.full(len(index), np.inf)  # distance to the nearest known/chosen, Å
    for c, mask in groups.items():
        labelled = [fingerprint(atoms) for atoms in known if _composition(atoms) == c]
        if labelled:
            nearest[mask] = _distances(prints[c], np.stack(labelled)).min(axis=1)
    available = np.ones(len(index), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < max_new:
        available &= nearest >= min_distance
        if not available.any():
            break
        unseen = available & np.isinf(nearest)
        eligible = unseen if unseen.any() else available
        score = sigmas[index] * np.where(np.isinf(nearest), 1.0, nearest)
        pick = int(np.argmax(np.where(eligible, score, -np.inf)))
        chosen.append(int(index[pick]))
        available[pick] = False
        group = compositions[pick]
        mask = groups[group]
        nearest[mask] = np.minimum(nearest[mask], _distances(prints[group], own[pick][None])[:, 0])
    return chosen


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS differences (Å) between the fingerprints in the rows of ``a`` and of ``b``."""
    return np.sqrt(np.mean((a[:, None, :] - b[None, :, :]) ** 2, axis=-1))
