"""mlpot's on-disk data set: one HDF5 file of frames, written in a stream, read lazily.

A data set larger than memory is converted once (``mlpot data convert``, :func:`convert`)
and trained from without ever being held whole: :class:`HDF5Frames` is a read-only
sequence of :class:`~mlpot.data.records.Frame` that reads a frame when it is indexed (a
batch in one read per column), and its slices and index arrays are views
(:class:`~mlpot.data.lazy.FrameSubset`). Training statistics come from column accessors
(energies, atom counts, compositions, Σ F²) computed chunk by chunk.

Layout (root attributes ``format = "mlpot-frames"``, ``version = 1``; n frames, N atoms)::

    numbers          (N,) int16          atomic numbers
    positions        (N, 3) float64      Å
    forces           (N, 3) float64      eV/Å (zeros where has_forces is false)
    partial_charges  (N,) float64        e (zeros where has_partial_charges is false)
    offsets          (n + 1,) int64      frame k holds atoms offsets[k]:offsets[k + 1]
    energy           (n,) float64        eV; NaN = missing
    cell             (n, 3, 3) float64   Å, rows are lattice vectors
    pbc              (n, 3) bool
    charge           (n,) float64        e, total charge
    stress           (n, 3, 3) float64   eV/Å³ (zeros where has_stress is false)
    dipole           (n, 3) float64      e·Å (zeros where has_dipole is false)
    has_forces, has_stress, has_dipole, has_partial_charges      (n,) bool
    config_type      (n,) str            "" = none
    source           (n,) int32          row of ``sources``: the file the frame came from
    index            (n,) int64          the frame's index in that file
    sources          (m,) str

Root attributes ``n_with_forces``, ``n_with_stress``, ``n_with_dipole`` and
``n_with_partial_charges`` count the frames holding each optional label; a label no frame
has is not read at all (a third fewer reads per frame for energies and forces only).
Every dataset is chunked and gzip-compressed (with byte shuffling), so a frame's read touches
one chunk per column. Frames keep their original file and index, so errors name those.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from mlpot.data.lazy import FrameSequence, square_sum
from mlpot.data.records import (HDF5_SUFFIXES, ISOLATED_ATOM_TYPES, Frame, iter_frames,
                                validate_frame)
from mlpot.errors import DataError
from mlpot.files import atomic_path

FORMAT = "mlpot-frames"
VERSION = 1
# Chunks are small because training reads frames at random: each frame read decompresses
# one chunk of every column (1024 atoms: 24 kB of positions).
CHUNK_FRAMES = 256  # rows of a per-frame chunk
CHUNK_ATOMS = 1024  # rows of a per-atom chunk
WRITE_FRAMES = 1024  # frames buffered per write
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
# deflate expands at most 1032-fold: no dataset of an honest file holds more bytes than this
# many times the file's size (checked before anything is read, against edited sizes)
MAX_EXPANSION = 1100

F8 = np.float64
PER_ATOM = {"numbers": ((), np.int16), "positions": ((3,), F8), "forces": ((3,), F8),
            "partial_charges": ((), F8)}
PER_FRAME = {"energy": ((), F8), "cell": ((3, 3), F8), "pbc": ((3,), bool), "charge": ((), F8),
             "stress": ((3, 3), F8), "dipole": ((3,), F8), "has_forces": ((), bool),
             "has_stress": ((), bool), "has_dipole": ((), bool),
             "has_partial_charges": ((), bool), "config_type": ((), h5py.string_dtype()),
             "source": ((), np.int32), "index": ((), np.int64)}
LABELS = ("forces", "stress", "dipole", "partial_charges")  # optional, flagged by has_<label>


# -- writing -------------------------------------------------------------------------------

def write_hdf5(frames: Iterable[Frame], path: str | Path, *, source_note: str = "",
               chunk: int = WRITE_FRAMES,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``frames`` (any iterable, consumed once) into one HDF5 file at ``path``.

    Frames are buffered ``chunk`` at a time, so memory does not grow with the data set.
    The file appears only when complete (a temporary file in the same folder, then
    ``os.replace``); on any error the temporary file is removed and ``path`` is untouched.
    ``progress(frames, atoms)`` is called after every chunk written. ``source_note`` (free
    text: what the data is, how it was made) is stored as a root attribute.
    Returns {"path", "frames", "atoms", "bytes"}.
    """
    path = Path(path)
    with atomic_path(path, suffix=".tmp") as tmp:
        with h5py.File(tmp, "w") as handle:
            n_frames, n_atoms = _write(handle, frames, source_note, chunk, progress)
        if n_frames == 0:
            raise DataError("no frames to write", source=str(path))
    return {"path": str(path), "frames": n_frames, "atoms": n_atoms,
            "bytes": path.stat().st_size}


def _write(handle: h5py.File, frames: Iterable[Frame], source_note: str, chunk: int,
           progress) -> tuple[int, int]:
    import mlpot

    handle.attrs.update(format=FORMAT, version=VERSION, source_note=source_note,
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        mlpot_version=mlpot.__version__)
    for name, (shape, dtype) in PER_ATOM.items():
        handle.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape),
                              chunks=(CHUNK_ATOMS, *shape), **COMPRESSION)
    for name, (shape, dtype) in PER_FRAME.items():
        handle.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape),
                              chunks=(CHUNK_FRAMES, *shape), **COMPRESSION)
    handle.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,),
                          chunks=(CHUNK_FRAMES,), **COMPRESSION)
    sources: dict[str, int] = {}
    with_label = dict.fromkeys(LABELS, 0)
    n_frames = n_atoms = 0
    iterator = iter(frames)
    while block := list(itertools.islice(iterator, chunk)):
        rows = [_columns(frame, sources.setdefault(frame.source, len(sources)))
                for frame in block]
        for name in (*PER_ATOM, *PER_FRAME):
            _append(handle[name], np.concatenate([row[name] for row in rows]))
        sizes = np.array([len(frame) for frame in block], dtype=np.int64)
        _append(handle["offsets"], n_atoms + np.cumsum(sizes))
        n_frames, n_atoms = n_frames + len(block), n_atoms + int(sizes.sum())
        for label in LABELS:
            with_label[label] += sum(getattr(frame, label) is not None for frame in block)
        if progress is not None:
            progress(n_frames, n_atoms)
    handle.create_dataset("sources", data=np.array(list(sources), dtype=object),
                          dtype=h5py.string_dtype())
    handle.attrs.update(n_frames=n_frames, n_atoms=n_atoms,
                        **{f"n_with_{label}": n for label, n in with_label.items()})
    return n_frames, n_atoms


def _columns(frame: Frame, source: int) -> dict[str, np.ndarray]:
    """One frame's rows of every dataset (per-atom rows (n, ...), per-frame rows (1, ...))."""
    n = len(frame)

    def label(value, shape):
        return np.zeros(shape) if value is None else np.asarray(value, dtype=F8).reshape(shape)

    per_frame = {
        "energy": np.nan if frame.energy is None else frame.energy,
        "cell": frame.cell, "pbc": frame.pbc, "charge": frame.charge,
        "stress": label(frame.stress, (3, 3)), "dipole": label(frame.dipole, (3,)),
        "has_forces": frame.forces is not None, "has_stress": frame.stress is not None,
        "has_dipole": frame.dipole is not None,
        "has_partial_charges": frame.partial_charges is not None,
        "config_type": "" if frame.config_type is None else str(frame.config_type),
        "source": source, "index": frame.index}
    rows = {name: np.asarray([value], dtype=PER_FRAME[name][1])
            for name, value in per_frame.items()}
    rows.update(numbers=np.asarray(frame.numbers, dtype=np.int16), positions=frame.positions,
                forces=label(frame.forces, (n, 3)),
                partial_charges=label(frame.partial_charges, (n,)))
    return rows


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values


def convert(inputs: Sequence[str | Path], out: str | Path, *, energy_key: str = "energy",
            forces_key: str = "forces", db_select: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert extxyz / ASE db / npz files (or other mlpot HDF5 files) into one HDF5 file.

    Each input is read, validated and written frame by frame (:func:`iter_frames`), so
    neither input nor output is ever held in memory; bad input raises the DataError reading
    would, and leaves no ``out`` behind (an existing ``out`` is kept). Returns what
    :func:`write_hdf5` returns.
    """
    out = Path(out)
    if out.suffix.lower() not in HDF5_SUFFIXES:
        raise DataError(f"the output must end in {' or '.join(HDF5_SUFFIXES)}", source=str(out))
    if any(Path(p).resolve() == out.resolve() for p in inputs):
        raise DataError("the output is also an input", source=str(out))
    keys = dict(energy_key=energy_key, forces_key=forces_key, db_select=db_select)
    frames = itertools.chain.from_iterable(iter_frames(p, **keys) for p in inputs)
    note = (f"mlpot data convert {' '.join(map(str, inputs))} (energy_key={energy_key}, "
            f"forces_key={forces_key}, db_select={db_select})")
    return write_hdf5(frames, out, source_note=note, progress=progress)


def print_progress(every: int = 10_000) -> Callable[[int, int], None]:
    """A ``progress`` callback printing a line to stderr each time ``every`` more frames
    have been written."""
    state = {"next": every}

    def report(frames: int, atoms: int) -> None:
        if frames >= state["next"]:
            print(f"{frames} frames ({atoms} atoms) written", file=sys.stderr, flush=True)
            state["next"] = (frames // every + 1) * every

    return report


# -- reading -------------------------------------------------------------------------------

class HDF5Frames(FrameSequence):
    """The frames of an mlpot HDF5 file (see the module docstring), read on access.

    The file is opened lazily in each process (a pickled or forked copy opens its own
    handle), read-only; nothing but the open handle and h5py's bounded chunk cache stays in
    memory.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._handle, self._pid, self._datasets = None, None, {}
        handle = self._h5()
        with self._damaged():
            self._n = _check_layout(handle, self.path)
            self._sources = [s for s in handle["sources"].asstr()[:]]
        # labels no frame has: their columns are not read (attributes n_with_<label>)
        self._absent = {label for label in LABELS if handle.attrs.get(f"n_with_{label}") == 0}
        self._valid = np.zeros(self._n, dtype=bool)  # frames validated once read

    def __getstate__(self) -> dict:
        return {"path": self.path, "_n": self._n, "_sources": self._sources,
                "_absent": self._absent, "_valid": self._valid}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _handle=None, _pid=None, _datasets={})

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"HDF5Frames({self.path!r}, {self._n} frames)"

    def _h5(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = _open(self.path), os.getpid()
            self._datasets = {}
        return self._handle

    @contextlib.contextmanager
    def _damaged(self):
        """Reads inside turn HDF5's errors (a corrupt chunk, a wrong type) into DataError."""
        try:
            yield
        except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(f"cannot read ({type(error).__name__}: {error}); a damaged file?",
                            source=self.path) from None

    def _dataset(self, name: str) -> h5py.Dataset:
        """An open dataset (kept open: its chunk cache lives as long as it does)."""
        handle = self._h5()
        if name not in self._datasets:
            self._datasets[name] = handle[name]
        return self._datasets[name]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._datasets = None, {}

    # -- frames ----------------------------------------------------------------------------
    def frames_at(self, indices) -> list[Frame]:
        """The frames at ``indices``, in that order: one read per column for all of them
        (a contiguous range where they are, else a gathered selection)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return []
        wanted, where = np.unique(indices, return_inverse=True)
        with self._damaged():
            frames = self._read(wanted)
        for k in np.flatnonzero(~self._valid[wanted]):  # the checks records.py makes on read
            self._validate(frames[k], int(wanted[k]))
        self._valid[wanted] = True
        return [frames[k] for k in where.reshape(-1)]

    def _validate(self, frame: Frame, k: int) -> None:
        """DataError naming this file, its frame ``k`` and the frame's origin, for a frame
        records.validate_frame refuses (a file edited or damaged after it was written)."""
        try:
            validate_frame(frame, require_energy=False)
        except DataError as error:
            raise DataError(f"{error.detail} (from {frame.source}, frame {frame.index})",
                            source=self.path, frame=k, field=error.field) from None

    def _read(self, wanted: np.ndarray) -> list[Frame]:
        """Frames at sorted, distinct ``wanted`` indices."""
        if wanted[-1] - wanted[0] + 1 == len(wanted):  # contiguous: plain slices
            rows = slice(int(wanted[0]), int(wanted[-1]) + 1)
            bounds = self._dataset("offsets")[rows.start:rows.stop + 1]
            starts, stops = bounds[:-1], bounds[1:]
        else:
            rows = wanted
            ends = np.unique(np.concatenate([wanted, wanted + 1]))
            bounds = self._dataset("offsets")[ends]
            starts = bounds[np.searchsorted(ends, wanted)]
            stops = bounds[np.searchsorted(ends, wanted + 1)]
        skip = self._absent | {f"has_{label}" for label in self._absent}
        atom = {name: _read_ranges(self._dataset(name), starts, stops)
                for name in PER_ATOM if name not in skip}
        row = {name: (self._dataset(name)[rows] if name == "config_type" else
                      _read_ranges(self._dataset(name), wanted, wanted + 1))
               for name in PER_FRAME if name not in skip}
        for label in self._absent:
            row[f"has_{label}"] = np.zeros(len(wanted), dtype=bool)
        local = np.concatenate([[0], np.cumsum(stops - starts)])
        frames = []
        for k in range(len(wanted)):
            atoms = slice(int(local[k]), int(local[k + 1]))
            energy = float(row["energy"][k])
            frames.append(Frame(
                numbers=atom["numbers"][atoms].astype(np.int64),
                positions=atom["positions"][atoms], cell=row["cell"][k], pbc=row["pbc"][k],
                energy=None if np.isnan(energy) else energy,
                forces=atom["forces"][atoms] if row["has_forces"][k] else None,
                stress=row["stress"][k] if row["has_stress"][k] else None,
                dipole=row["dipole"][k] if row["has_dipole"][k] else None,
                partial_charges=(atom["partial_charges"][atoms]
                                 if row["has_partial_charges"][k] else None),
                charge=float(row["charge"][k]),
                config_type=row["config_type"][k].decode() or None,
                source=self._sources[int(row["source"][k])], index=int(row["index"][k])))
        return frames

    def origin(self, k: int) -> tuple[str, int]:
        """(source file, index in it) of frame ``k``."""
        with self._damaged():
            return (self._sources[int(self._dataset("source")[k])],
                    int(self._dataset("index")[k]))

    def check_energies(self, field: str = "energy") -> None:
        """DataError naming the original file and frame of the first frame without energy."""
        energies = self.energies()
        missing = np.flatnonzero(np.isnan(energies))
        if len(missing):
            source, index = self.origin(int(missing[0]))
            raise DataError(f"energy is missing (frame {missing[0]} of {self.path})",
                            source=source, frame=index, field=field)
        infinite = np.flatnonzero(np.isinf(energies))
        if len(infinite):
            k = int(infinite[0])
            raise DataError(f"energy is {energies[k]}", source=self.path, frame=k, field=field)

    # -- columns ---------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        with self._damaged():
            return self._dataset(name)[:]

    def energies(self) -> np.ndarray:
        return self._column("energy")

    def n_atoms(self) -> np.ndarray:
        return np.diff(self._column("offsets"))

    def has_forces(self) -> np.ndarray:
        return self._column("has_forces")

    def _per_atom_chunks(self, name: str) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """(first frame, stop, atom offsets relative to the chunk, values) for chunks of
        whole frames holding about CHUNK_ATOMS·16 atoms."""
        offsets = self._column("offsets")
        dataset = self._dataset(name)
        start = 0
        while start < self._n:
            stop = int(np.searchsorted(offsets, offsets[start] + 16 * CHUNK_ATOMS, "right"))
            stop = min(max(stop - 1, start + 1), self._n)
            local = offsets[start:stop + 1] - offsets[start]
            with self._damaged():
                values = dataset[offsets[start]:offsets[stop]]
            yield start, stop, local, values
            start = stop

    def force_squares(self) -> np.ndarray:
        result = np.zeros(self._n)
        has = self.has_forces()
        for start, stop, local, forces in self._per_atom_chunks("forces"):
            for k in np.flatnonzero(has[start:stop]):
                result[start + k] = square_sum(forces[local[k]:local[k + 1]])
        return result

    def compositions(self, elements: Sequence[int]) -> np.ndarray:
        lookup = np.full(256, -1, dtype=np.int64)
        lookup[np.asarray(elements, dtype=np.int64)] = np.arange(len(elements))
        n_el = len(elements)
        counts = np.zeros((self._n, n_el), dtype=np.int64)
        for start, stop, local, numbers in self._per_atom_chunks("numbers"):
            column = np.where((numbers >= 0) & (numbers < 256), lookup[numbers & 255], -1)
            frame = np.repeat(np.arange(stop - start), np.diff(local))
            known = column >= 0
            counts[start:stop] = np.bincount(frame[known] * n_el + column[known],
                                             minlength=(stop - start) * n_el
                                             ).reshape(stop - start, n_el)
        return counts

    def elements(self) -> list[int]:
        """Sorted atomic numbers present; DataError naming the first frame holding one that
        is no element (a damaged or edited file)."""
        present = set()
        for start, stop, local, numbers in self._per_atom_chunks("numbers"):
            present.update(np.unique(numbers).tolist())
            wrong = np.flatnonzero((numbers < 1) | (numbers > 118))
            if len(wrong):
                k = start + int(np.searchsorted(local, wrong[0], "right")) - 1
                raise DataError(f"invalid atomic number {int(numbers[wrong[0]])}",
                                source=self.path, frame=k, field="numbers")
        return sorted(present)

    def isolated_mask(self) -> np.ndarray:
        mask = (self.n_atoms() == 1) & ~self._column("pbc").any(axis=1)
        dataset = self._dataset("config_type").asstr()
        for start in range(0, self._n, CHUNK_FRAMES * 16):
            with self._damaged():
                names = dataset[start:start + CHUNK_FRAMES * 16]
            mask[start:start + len(names)] |= [n.lower() in ISOLATED_ATOM_TYPES for n in names]
        return mask


def _read_ranges(dataset: h5py.Dataset, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Rows starts[i]:stops[i] of ``dataset`` for every i, concatenated, in one HDF5 read
    (the ranges must be ascending and disjoint)."""
    if len(starts) == 1 or np.all(starts[1:] == stops[:-1]):
        return dataset[int(starts[0]):int(stops[-1])]
    tail = dataset.shape[1:]
    out = np.empty((int(np.sum(stops - starts)), *tail), dtype=dataset.dtype)
    selection = dataset.id.get_space()
    selection.select_none()
    for start, stop in zip(starts.tolist(), stops.tolist()):
        if stop > start:
            selection.select_hyperslab((start, *[0] * len(tail)), (stop - start, *tail),
                                       op=h5py.h5s.SELECT_OR)
    dataset.id.read(h5py.h5s.create_simple(out.shape), selection, out)
    return out


def _check_layout(handle: h5py.File, path: str) -> int:
    """The number of frames, after checking every dataset's shape and type against the
    layout, the sizes against the file's size and the offsets and source rows against the
    datasets they index: DataError (naming the dataset) for a damaged or edited file, before
    anything large is read."""
    def bad(name: str, message: str):
        return DataError(f"{message} (a damaged or edited file?)", source=path, field=name)

    n, n_atoms = handle["energy"].shape[0] if handle["energy"].ndim else -1, None
    limit = MAX_EXPANSION * Path(path).stat().st_size + 2**20  # bytes
    expected = {**{name: (None, *shape) for name, (shape, _) in PER_ATOM.items()},
                **{name: (n, *shape) for name, (shape, _) in PER_FRAME.items()},
                "offsets": (n + 1,), "sources": (None,)}
    for name, shape in expected.items():
        dataset = handle[name]
        if not isinstance(dataset, h5py.Dataset):
            raise bad(name, "not a dataset")
        found = dataset.shape
        if (found is None or len(found) != len(shape)
                or any(e is not None and e != f for e, f in zip(shape, found))):
            raise bad(name, f"dataset has shape {found}, expected "
                            f"{tuple('N' if e is None else e for e in shape)}")
        if name in PER_ATOM:
            if n_atoms is None:
                n_atoms = found[0]
            elif found[0] != n_atoms:
                raise bad(name, f"dataset holds {found[0]} atoms, 'numbers' {n_atoms}")
        kind = (PER_ATOM.get(name) or PER_FRAME.get(name) or ((), np.int64))[1]
        if name not in ("config_type", "sources") and dataset.dtype.kind != np.dtype(kind).kind:
            raise bad(name, f"dataset has type {dataset.dtype}, expected {np.dtype(kind)}")
        if dataset.size * dataset.dtype.itemsize > limit:
            raise bad(name, f"dataset claims {dataset.size * dataset.dtype.itemsize} bytes, "
                            f"more than a file of {Path(path).stat().st_size} bytes can hold")
    offsets = handle["offsets"][:]
    if offsets[0] != 0 or offsets[-1] != n_atoms or np.any(np.diff(offsets) < 0):
        raise bad("offsets", f"offsets must rise from 0 to the {n_atoms} atoms stored")
    rows = handle["source"][:]
    if n and (rows.min() < 0 or rows.max() >= handle["sources"].shape[0]):
        raise bad("source", f"source rows outside the {handle['sources'].shape[0]} sources")
    return int(n)


def _open(path: str) -> h5py.File:
    """Open an mlpot HDF5 file read-only, checking its format and version."""
    if not Path(path).exists():
        raise DataError("file does not exist", source=path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"not an HDF5 file ({error})", source=path, field="format") from None
    found = handle.attrs.get("format")
    if found != FORMAT:
        handle.close()
        raise DataError(f"not an mlpot data file: attribute 'format' is {found!r}, expected "
                        f"{FORMAT!r} (write one with `mlpot data convert`)", source=path,
                        field="format")
    version = int(handle.attrs.get("version", 0))
    if version > VERSION:
        handle.close()
        raise DataError(f"format version {version} is newer than this mlpot reads ({VERSION}); "
                        f"update mlpot", source=path, field="version")
    for name in (*PER_ATOM, *PER_FRAME, "offsets", "sources"):
        if name not in handle:
            handle.close()
            raise DataError("dataset missing (a truncated or foreign file?)", source=path,
                            field=name)
    return handle
