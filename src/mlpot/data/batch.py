"""Turning frames into batches: one disjoint graph of many structures (see ``mlpot.keys``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mlpot import keys
from mlpot.data.lazy import is_lazy
from mlpot.data.records import Frame
from mlpot.errors import ConfigError
from mlpot.neighbors import graph_arrays


class GraphCache:
    """Neighbour graphs of frames for a fixed cutoff, collated into batches.

    Frames in memory never move, so their edges and triplets are computed once and kept.
    Frames on disk (:mod:`mlpot.data.ondisk`) are read and their graphs computed per batch,
    and nothing is kept: memory does not grow with the data set.
    """

    def __init__(self, frames: Sequence[Frame], cutoff: float,
                 angular_cutoff: float | None = None):
        self.frames = frames
        self.cutoff = cutoff
        self.angular_cutoff = angular_cutoff
        self.lazy = is_lazy(frames)
        self._graphs: list[dict | None] = [] if self.lazy else [None] * len(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def _compute(self, frame: Frame) -> dict[str, np.ndarray]:
        return graph_arrays(frame.positions, frame.cell, frame.pbc, self.cutoff,
                            self.angular_cutoff)

    def graph(self, index: int) -> dict[str, np.ndarray]:
        if self.lazy:
            return self._compute(self.frames[index])
        if self._graphs[index] is None:
            self._graphs[index] = self._compute(self.frames[index])
        return self._graphs[index]

    def batch(self, indices, dtype=torch.float64) -> dict[str, torch.Tensor]:
        """Collate the frames at ``indices`` into one batch."""
        if self.lazy:  # one read per column for the whole batch
            frames = self.frames.frames_at(list(indices))
            return collate(frames, [self._compute(f) for f in frames], dtype=dtype)
        return collate([self.frames[k] for k in indices], [self.graph(k) for k in indices],
                       dtype=dtype)


def collate(frames: list[Frame], graphs: list[dict[str, np.ndarray]],
            dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Concatenate frames and their graphs; indices are offset so the batch is one graph."""
    n_atoms = np.array([len(f) for f in frames], dtype=np.int64)
    atom_offsets = np.cumsum(n_atoms) - n_atoms
    edge_counts = np.array([g[keys.EDGE_INDEX].shape[1] for g in graphs], dtype=np.int64)
    edge_offsets = np.cumsum(edge_counts) - edge_counts

    def cat(arrays, axis=0):  # numpy arrays, or tensors (a graph already on its device)
        if all(torch.is_tensor(a) for a in arrays):
            return torch.cat(arrays, dim=axis)
        return torch.from_numpy(np.concatenate(arrays, axis=axis))

    batch = {
        keys.POSITIONS: cat([f.positions for f in frames]).to(dtype),
        keys.NUMBERS: cat([f.numbers for f in frames]),
        keys.BATCH: torch.repeat_interleave(torch.arange(len(frames)), torch.from_numpy(n_atoms)),
        keys.N_ATOMS: torch.from_numpy(n_atoms),
        keys.CELL: torch.from_numpy(np.stack([f.cell for f in frames])).to(dtype),
        keys.PBC: torch.from_numpy(np.stack([f.pbc for f in frames])),
        keys.CHARGE: torch.tensor([f.charge for f in frames], dtype=dtype),
        keys.EDGE_INDEX: cat([g[keys.EDGE_INDEX] + off for g, off in zip(graphs, atom_offsets)],
                             axis=1),
        keys.EDGE_SHIFT: cat([g[keys.EDGE_SHIFT] for g in graphs]).to(dtype),
    }
    if all(keys.TRIPLETS in g for g in graphs):
        batch[keys.TRIPLETS] = cat([g[keys.TRIPLETS] + off for g, off in zip(graphs, edge_offsets)],
                                   axis=1)
    if all(f.energy is not None for f in frames):
        # float64 always: total energies (~1e4 eV) would lose meV in float32
        batch[keys.ENERGY] = torch.tensor([f.energy for f in frames], dtype=torch.float64)
    has_forces = np.array([f.forces is not None for f in frames])
    if has_forces.any():
        batch[keys.HAS_FORCES] = torch.from_numpy(has_forces)
        batch[keys.FORCES] = cat([f.forces if f.forces is not None else np.zeros((len(f), 3))
                                  for f in frames]).to(dtype)
    if all(f.stress is not None for f in frames):
        batch[keys.STRESS] = torch.from_numpy(np.stack([f.stress for f in frames])).to(dtype)
    has_dipole = np.array([f.dipole is not None and not f.pbc.any() for f in frames])
    if has_dipole.any():
        batch[keys.HAS_DIPOLE] = torch.from_numpy(has_dipole)
        batch[keys.DIPOLE] = torch.from_numpy(np.stack([
            f.dipole if ok else np.zeros(3) for f, ok in zip(frames, has_dipole)])).to(dtype)
    has_charges = np.array([f.partial_charges is not None for f in frames])
    if has_charges.any():
        batch[keys.HAS_PARTIAL_CHARGES] = torch.from_numpy(has_charges)
        batch[keys.PARTIAL_CHARGES] = cat([
            f.partial_charges if ok else np.zeros(len(f))
            for f, ok in zip(frames, has_charges)]).to(dtype)
    return batch


def pick_device(name: str, setting: str = "device") -> torch.device:
    """torch device for a "cpu" / "cuda" / "auto" setting (auto: CUDA when a GPU is
    present); a clear error naming ``setting`` when CUDA is asked for and absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is {name!r} but torch sees no GPU "
                          f"(torch {torch.__version__})")
    return torch.device(name)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (no copy when already there)."""
    return {key: value.to(device) for key, value in batch.items()}


def structure_jacobian(function, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂function(r)/∂r_{S,a,α} for every structure S of the batch at once, by forward-mode
    autograd: structures share no atoms, so one tangent moving atom a of every structure serves
    them all (3·max_n passes, batched with vmap; zero where a structure has no atom a).

    ``function`` maps positions (n_atoms, 3) to a tensor; the result has shape
    (max_n, 3, *that tensor's shape)."""
    positions = batch[keys.POSITIONS].detach()
    n_atoms = batch[keys.N_ATOMS]
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    local = torch.arange(len(positions), device=positions.device) - offsets[batch[keys.BATCH]]
    max_n = int(n_atoms.max())
    tangents = positions.new_zeros(max_n, 3, *positions.shape)
    for a in range(max_n):
        for alpha in range(3):
            tangents[a, alpha, local == a, alpha] = 1.0

    def derivative(tangent):
        return torch.func.jvp(function, (positions,), (tangent,))[1]

    jacobian = torch.func.vmap(derivative)(tangents.reshape(max_n * 3, *positions.shape))
    return jacobian.reshape(max_n, 3, *jacobian.shape[1:])
