"""Lazy sequences of frames: read on access, sliced into views, with per-frame columns.

:class:`FrameSequence` is what training code sees of a data set too large for memory (see
:mod:`mlpot.data.ondisk` for the HDF5 file behind it): an int index gives a
:class:`~mlpot.data.records.Frame`, a slice, index array or boolean mask a
:class:`FrameSubset` view (nothing is read), ``frames_at`` several frames in one read, and
column accessors (energies, atom counts, compositions, Σ F², isolated atoms, elements) give
training statistics without building Frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from mlpot.data.records import Frame

READ_BLOCK = 256  # frames read together when iterating


def square_sum(values: np.ndarray) -> float:
    """Σ values², correctly rounded (math.fsum), so that it does not depend on memory layout
    or summation order: frames in memory and on disk give the same bits."""
    return math.fsum(np.square(values).ravel().tolist())


def is_lazy(frames) -> bool:
    """True for frames read from disk on access (:class:`FrameSequence`), False for lists."""
    return isinstance(frames, FrameSequence)


class FrameSequence(Sequence):
    """A read-only sequence of frames read on access. An int index gives a Frame; a slice,
    index array or boolean mask gives a :class:`FrameSubset` view (nothing is read).

    Column accessors return one value per frame without building Frames."""

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"frame {key} out of range ({n} frames)")
            return self.frames_at([key % n])[0]
        if isinstance(key, slice):
            return FrameSubset(self, np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {key.shape} for {len(self)} frames")
            key = np.flatnonzero(key)
        return FrameSubset(self, key)

    def __iter__(self) -> Iterator[Frame]:
        for start in range(0, len(self), READ_BLOCK):
            yield from self.frames_at(range(start, min(start + READ_BLOCK, len(self))))

    def frames_at(self, indices) -> list[Frame]:
        """The frames at ``indices`` (non-negative), in that order."""
        raise NotImplementedError

    # column accessors, one row per frame
    def energies(self) -> np.ndarray:
        """(n,) eV, NaN where missing."""
        raise NotImplementedError

    def n_atoms(self) -> np.ndarray:
        """(n,) int64."""
        raise NotImplementedError

    def has_forces(self) -> np.ndarray:
        """(n,) bool."""
        raise NotImplementedError

    def force_squares(self) -> np.ndarray:
        """(n,) Σ over a frame's force components of F², eV²/Å² (0 without forces)."""
        raise NotImplementedError

    def compositions(self, elements: Sequence[int]) -> np.ndarray:
        """(n, len(elements)) int64: how many atoms of each element every frame holds."""
        raise NotImplementedError

    def isolated_mask(self) -> np.ndarray:
        """(n,) bool: :attr:`Frame.is_isolated_atom` of every frame."""
        raise NotImplementedError

    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        raise NotImplementedError


class FrameSubset(FrameSequence):
    """The frames ``base[indices]`` of a lazy sequence, in that order (repeats allowed);
    a subset of a subset refers to the base directly."""

    def __init__(self, base: FrameSequence, indices):
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(base, FrameSubset):
            base, indices = base.base, base.indices[indices]
        if len(indices) and (indices.min() < -len(base) or indices.max() >= len(base)):
            raise IndexError(f"frame indices out of range ({len(base)} frames)")
        self.base, self.indices = base, indices % max(len(base), 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"FrameSubset({self.base!r}, {len(self)} frames)"

    def frames_at(self, indices) -> list[Frame]:
        return self.base.frames_at(self.indices[np.asarray(indices, dtype=np.int64)])

    def energies(self) -> np.ndarray:
        return self.base.energies()[self.indices]

    def n_atoms(self) -> np.ndarray:
        return self.base.n_atoms()[self.indices]

    def has_forces(self) -> np.ndarray:
        return self.base.has_forces()[self.indices]

    def force_squares(self) -> np.ndarray:
        return self.base.force_squares()[self.indices]

    def compositions(self, elements: Sequence[int]) -> np.ndarray:
        return self.base.compositions(elements)[self.indices]

    def isolated_mask(self) -> np.ndarray:
        return self.base.isolated_mask()[self.indices]

    def elements(self) -> list[int]:
        candidates = self.base.elements()
        counts = self.compositions(candidates).sum(axis=0)
        return [z for z, count in zip(candidates, counts) if count > 0]
