"""Neighbour lists (from vesin) and angular triplets, for molecules and periodic cells.

An edge (i, j, S) means atom j, shifted by the integer cell vector S, lies within the
cutoff of atom i: r_ij = r_j - r_i + S @ cell. Both directions of every pair are listed.
"""

from __future__ import annotations

import numpy as np
import torch
from vesin import NeighborList

from mlpot import keys
from mlpot.errors import DataError

VESIN_MAX_CELLS = 1e5  # vesin's cap on its cell grid (MAX_NUMBER_OF_CELLS in cpu_cell_list.cpp)
MAX_SPAN = 1e5  # Å: a structure (or cell vector) longer than this is taken as a broken one


def neighbor_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                   return_distances: bool = False):
    """Full neighbour list within ``cutoff`` (Å), sorted by centre atom.

    Returns (i, j, S) as int64 arrays, and distances (Å) if asked. A structure vesin cannot
    search (non-finite numbers, atoms or a cell spread too far for its cell grid) raises
    :class:`~mlpot.errors.DataError` (field ``positions`` or ``cell``) instead.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    search = search_cutoff(positions, box, pbc, cutoff)
    calculator = NeighborList(cutoff=search, full_list=True)
    try:
        i, j, shifts, distances = calculator.compute(points=positions, box=box,
                                                     periodic=[bool(p) for p in pbc],
                                                     quantities="ijSd")
    except RuntimeError as error:  # vesin's own checks, e.g. a singular cell
        raise DataError(f"neighbour search failed ({error})", field="cell") from None
    if search > cutoff:  # searched wider to keep vesin's cell grid whole: keep the cutoff's
        inside = distances < cutoff
        i, j, shifts, distances = i[inside], j[inside], shifts[inside], distances[inside]
    order = np.lexsort((j, i))
    i, j = i[order].astype(np.int64), j[order].astype(np.int64)
    shifts, distances = shifts[order].astype(np.int64), distances[order]
    if return_distances:
        return i, j, shifts, distances
    return i, j, shifts


def search_cutoff(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray,
                  cutoff: float) -> float:
    """The cutoff (Å, ≥ ``cutoff``) at which vesin can search this structure; DataError
    (field ``positions`` or ``cell``) for one it cannot search at all.

    vesin (0.6) divides the bounding box (the cell along periodic directions, the atoms'
    extent along the others) into cells of about the cutoff; past 1e5 cells it shrinks every
    direction by one factor, and a direction left with no cell divides by zero: SIGFPE, the
    process dies (one atom at 1e8 Å, a flat structure of 10³ cutoffs). A larger search
    cutoff that keeps the grid under the cap avoids that (pairs beyond ``cutoff`` are
    dropped after the search); structures spanning more than MAX_SPAN, or holding numbers
    that are not finite, are refused.
    """
    if not np.all(np.isfinite(positions)):
        atom = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise DataError(f"atom {atom} has a position that is not a finite number "
                        f"({positions[atom].tolist()})", field="positions")
    if not np.all(np.isfinite(box)):
        raise DataError("the cell holds numbers that are not finite", field="cell")
    lengths = _bounding_lengths(positions, box, pbc)
    if lengths.max() > MAX_SPAN:
        axis = int(np.argmax(lengths))
        if pbc[axis]:
            raise DataError(f"cell vector {axis} is {lengths[axis]:.3g} Å long (more than "
                            f"{MAX_SPAN:g} Å); is the cell wrong?", field="cell")
        extent = np.ptp(positions, axis=0)
        d = int(np.argmax(extent))
        raise DataError(f"atoms {int(np.argmin(positions[:, d]))} and "
                        f"{int(np.argmax(positions[:, d]))} are {extent[d]:.3g} Å apart along "
                        f"{'xyz'[d]} (more than {MAX_SPAN:g} Å); is a coordinate wrong?",
                        field="positions")
    search = float(cutoff)
    if not 0 < search < np.inf:
        raise ValueError(f"neighbour cutoff {cutoff} Å: expected a positive number")
    while np.prod(np.clip(np.trunc(lengths / search), 1.0, None)) > 0.9 * VESIN_MAX_CELLS:
        search *= 1.1
    return search


def _bounding_lengths(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """(3,) Å, at least vesin's bounding box: the atoms' extent along x, y, z of a molecule;
    for a (partly) periodic structure the length of each periodic cell vector, and the
    atoms' whole diameter along every other direction (vesin turns those directions)."""
    extent = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
    if not pbc.any():
        return extent
    return np.where(pbc, np.linalg.norm(box, axis=1), np.linalg.norm(extent))


def triplets_from_edges(centers, n_atoms: int):
    """All pairs of edges (a, b), a < b, that share a centre atom; ``centers`` sorted
    (a numpy array or a tensor on any device; the result is of the same kind and device).

    Returns (2, n_triplets) int64 edge indices. Each unordered neighbour pair (j, k)
    of atom i appears once.
    """
    if isinstance(centers, np.ndarray):
        return triplets_from_edges(torch.from_numpy(centers.astype(np.int64)), n_atoms).numpy()
    n_edges = len(centers)
    counts = torch.bincount(centers, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    edges = torch.arange(n_edges, device=centers.device)
    n_partners = counts[centers] - 1 - (edges - starts[centers])
    first = torch.repeat_interleave(edges, n_partners)
    offsets = (torch.arange(len(first), device=centers.device)
               - torch.repeat_interleave(torch.cumsum(n_partners, 0) - n_partners, n_partners))
    return torch.stack([first, first + 1 + offsets])


def graph_arrays(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                 angular_cutoff: float | None = None) -> dict[str, np.ndarray]:
    """Edges and cell shifts of one structure as numpy arrays; with ``angular_cutoff`` (Å)
    also the triplets formed by edges shorter than it."""
    i, j, shifts, distances = neighbor_pairs(positions, cell, pbc, cutoff, return_distances=True)
    return _graph(i, j, shifts, distances, len(positions), angular_cutoff)


def _graph(i, j, shifts, distances, n_atoms: int, angular_cutoff: float | None) -> dict:
    """The graph arrays of a full neighbour list sorted by centre atom (numpy arrays, or
    tensors on the device the inputs are on)."""
    if isinstance(i, np.ndarray):
        graph = {keys.EDGE_INDEX: np.stack([i, j]), keys.EDGE_SHIFT: shifts.astype(np.float64)}
        short = np.nonzero(distances < angular_cutoff)[0] if angular_cutoff is not None else None
    else:
        graph = {keys.EDGE_INDEX: torch.stack([i, j]), keys.EDGE_SHIFT: shifts.double()}
        short = (torch.nonzero(distances < angular_cutoff)[:, 0]
                 if angular_cutoff is not None else None)
    if short is not None:
        graph[keys.TRIPLETS] = short[triplets_from_edges(i[short], n_atoms)]
    return graph


def half_neighbor_pairs(positions: np.ndarray, cell: np.ndarray, cutoff: float):
    """(i, j, S) of a periodic cell within ``cutoff`` (Å), each pair once: i < j, and of an
    atom's pairs with its own images one of ±S (the first non-zero component positive)."""
    i, j, shifts = neighbor_pairs(positions, cell, [True] * 3, cutoff)
    first = np.where(shifts[:, 0] != 0, shifts[:, 0],
                     np.where(shifts[:, 1] != 0, shifts[:, 1], shifts[:, 2]))
    keep = (i < j) | ((i == j) & (first > 0))
    return i[keep], j[keep], shifts[keep]


class SkinNeighborList:
    """Neighbour graphs along a trajectory, searched rarely: pairs within cutoff + skin are
    kept and filtered to the cutoff at each call; a new search happens only when some atom
    has moved more than skin/2 since the last one (then no pair can have entered the cutoff
    unseen), or the cell, periodicity or atoms changed. Gives exactly :func:`graph_arrays`.

    With a torch ``device`` the kept pairs live there and the graph comes back as tensors on
    it: each step's filtering and triplets run on that device (a GPU), and only the
    positions travel to it, not the graph. The search itself (vesin) stays on the CPU.

    Args:
        cutoff, angular_cutoff: Å, as for :func:`graph_arrays`.  skin: Å.
        device: None (numpy arrays) or a torch device (tensors there).
    """

    def __init__(self, cutoff: float, angular_cutoff: float | None = None, skin: float = 1.0,
                 device: torch.device | str | None = None):
        self.cutoff, self.angular_cutoff, self.skin = float(cutoff), angular_cutoff, float(skin)
        self.device = torch.device(device) if device is not None else None
        self.searches = 0  # how many neighbour searches were made (for tests and logs)
        self._reference = None  # (positions, cell, pbc, numbers) at the last search
        self._pairs = None  # (i, j, shifts) within cutoff + skin

    def _stale(self, positions, cell, pbc, numbers) -> bool:
        if self._reference is None:
            return True
        old_positions, old_cell, old_pbc, old_numbers = self._reference
        if (len(old_numbers) != len(numbers) or np.any(old_numbers != numbers)
                or np.any(old_pbc != pbc) or not np.allclose(old_cell, cell, rtol=0, atol=1e-12)):
            return True
        moved = np.sqrt(((positions - old_positions) ** 2).sum(1)).max(initial=0.0)
        return moved > self.skin / 2

    def __call__(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                 numbers: np.ndarray) -> dict[str, np.ndarray]:
        """The graph of this structure (same arrays as :func:`graph_arrays`)."""
        positions, cell = np.asarray(positions, dtype=np.float64), np.asarray(cell, np.float64)
        pbc = np.asarray(pbc, dtype=bool)
        if self._stale(positions, cell, pbc, numbers):
            self._pairs = neighbor_pairs(positions, cell, pbc, self.cutoff + self.skin)
            if self.device is not None:
                self._pairs = tuple(torch.from_numpy(a).to(self.device) for a in self._pairs)
            self._reference = (positions.copy(), cell.copy(), pbc.copy(), np.array(numbers))
            self.searches += 1
        i, j, shifts = self._pairs
        box = cell if pbc.any() else np.zeros((3, 3))
        if self.device is not None:
            positions, box = (torch.from_numpy(a).to(self.device) for a in (positions, box))
            distances = (positions[j] - positions[i] + shifts.double() @ box).norm(dim=1)
        else:
            distances = np.sqrt(((positions[j] - positions[i] + shifts @ box) ** 2).sum(1))
        inside = distances < self.cutoff
        return _graph(i[inside], j[inside], shifts[inside], distances[inside], len(positions),
                      self.angular_cutoff)


def edge_vectors(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """r_ij = r_j - r_i + S @ cell for every edge, (n_edges, 3) Å; differentiable.

    No branch on the values (whether any shift is non-zero): exported programs cannot keep
    one. One structure (MD, export) multiplies by its cell directly; a batch gathers each
    edge's cell. A batch that holds the vectors themselves (``EDGE_VECTORS``: an MD code's
    ghost atoms, which carry their images' coordinates) gives them unchanged."""
    if keys.EDGE_VECTORS in batch:
        return batch[keys.EDGE_VECTORS]
    i, j = batch[keys.EDGE_INDEX]
    positions = batch[keys.POSITIONS]
    # index_select, not positions[j]: its gradient is an index_add (on a GPU far cheaper than
    # the sorted index_put that advanced indexing's gradient runs)
    vectors = positions.index_select(0, j) - positions.index_select(0, i)
    shifts = batch[keys.EDGE_SHIFT].to(positions.dtype)
    cell = batch[keys.CELL]
    if cell.shape[0] == 1:
        vectors = vectors + shifts @ cell[0]
    else:
        vectors = vectors + torch.einsum("ea,eab->eb", shifts, cell[batch[keys.BATCH][i]])
    return vectors
