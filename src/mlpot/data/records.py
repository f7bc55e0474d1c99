"""Reading and validating reference structures (extxyz, ASE database, rMD17 npz, mlpot HDF5).

Every reader returns a list of :class:`Frame` in ASE units (Å, eV, eV/Å) — except for
mlpot's on-disk HDF5 files, read lazily as a :class:`~mlpot.data.ondisk.HDF5Frames`
sequence. :func:`iter_frames` streams validated frames one at a time (for conversion).
Problems are reported as :class:`~mlpot.errors.DataError` naming the file, frame and field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms, units

from mlpot.errors import DataError

MIN_DISTANCE = 0.1  # Å; closer atoms are taken as a broken structure
KCAL_PER_MOL = units.kcal / units.mol  # eV per (kcal/mol)
ISOLATED_ATOM_TYPES = {"isolatedatom", "isolated_atom"}
HDF5_SUFFIXES = (".h5", ".hdf5")  # mlpot's on-disk format (mlpot.data.ondisk)


@dataclasses.dataclass
class Frame:
    """One structure with optional labels, in ASE units."""

    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64, Å
    cell: np.ndarray  # (3, 3) float64, Å, rows are lattice vectors
    pbc: np.ndarray  # (3,) bool
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (n, 3) float64, eV/Å
    stress: np.ndarray | None = None  # (3, 3) float64, eV/Å³
    dipole: np.ndarray | None = None  # (3,) float64, e·Å (molecules; reference dipole moment)
    partial_charges: np.ndarray | None = None  # (n,) float64, e (reference atomic charges)
    charge: float = 0.0  # e
    config_type: str | None = None
    source: str = "<memory>"
    index: int = 0

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def is_isolated_atom(self) -> bool:
        """True for single-atom reference frames (config_type IsolatedAtom or one atom alone)."""
        if self.config_type is not None and self.config_type.lower() in ISOLATED_ATOM_TYPES:
            return True
        return len(self.numbers) == 1 and not self.pbc.any()

    def to_atoms(self) -> Atoms:
        """An ``ase.Atoms`` of this frame (labels not attached)."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info["charge"] = self.charge
        return atoms


def frame_from_atoms(atoms: Atoms, *, source: str, index: int, energy_key: str = "energy",
                     forces_key: str = "forces", stress_key: str = "stress") -> Frame:
    """Build a Frame from an ``ase.Atoms``, finding labels in info/arrays or an attached calculator."""
    results = dict(getattr(atoms.calc, "results", {}) or {})
    energy = atoms.info.get(energy_key)
    if energy is None and energy_key in ("energy", "free_energy"):
        energy = results.get(energy_key, results.get("energy"))
    forces = atoms.arrays.get(forces_key)
    if forces is None and forces_key == "forces":
        forces = results.get("forces")
    stress = atoms.info.get(stress_key)
    if stress is None and stress_key == "stress":
        stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (6,):  # Voigt order xx yy zz yz xz xy
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    try:
        energy = None if energy is None else float(energy)
    except (TypeError, ValueError):
        raise DataError(f"energy is not a number: {energy!r}", source=source, frame=index,
                        field=energy_key) from None
    dipole = atoms.info.get("dipole", results.get("dipole"))
    if dipole is not None:
        dipole = np.asarray(dipole, dtype=np.float64)
        if dipole.shape != (3,):
            raise DataError(f"dipole has shape {dipole.shape}, expected (3,)", source=source,
                            frame=index, field="dipole")
    partial_charges = atoms.arrays.get("charges", results.get("charges"))
    if partial_charges is not None:
        partial_charges = np.asarray(partial_charges, dtype=np.float64)
        if partial_charges.shape != (len(atoms),):
            raise DataError(f"charges have shape {partial_charges.shape}, expected "
                            f"({len(atoms)},)", source=source, frame=index, field="charges")
    return Frame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell.array, dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        energy=energy,
        forces=None if forces is None else np.asarray(forces, dtype=np.float64),
        stress=stress,
        dipole=dipole,
        partial_charges=partial_charges,
        charge=float(atoms.info.get("charge", 0.0)),
        config_type=atoms.info.get("config_type"),
        source=source,
        index=index,
    )


def _iter_ase_file(path: Path, fmt: str | None, **keys) -> Iterator[Frame]:
    from ase.io import iread

    index = 0  # frames read so far: where a parse error is
    try:
        for atoms in iread(str(path), index=":", format=fmt):
            frame = frame_from_atoms(atoms, source=str(path), index=index, **keys)
            index += 1
            yield frame
    except DataError:
        raise
    except Exception as error:  # ASE raises many kinds on malformed input
        found = _xyz_layout_problem(path) if fmt == "extxyz" else None
        if found is not None:  # ASE scans the whole file first: name the frame it fails at
            frame, problem = found
            raise DataError(problem, source=str(path), frame=frame, field="atom count") from None
        raise DataError(f"cannot parse ({type(error).__name__}: {error})", source=str(path),
                        frame=index) from None


def _xyz_layout_problem(path: Path) -> tuple[int, str] | None:
    """(frame, what is wrong) for the first frame of an (ext)xyz file whose atom count does
    not match its lines (a count line that is no number, atom lines too few or too many),
    or None if the counts fit. Reads line by line (any file size)."""
    def atom_like(line: str) -> bool:
        fields = line.split()
        return len(fields) >= 4 and not fields[0].lstrip("+-").isdigit()

    frame, count, seen, head_line = 0, None, 0, 0  # count None: a count line comes next
    with open(path, errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if count is None:
                head = line.strip()
                if not head:
                    continue  # blank lines between or after frames
                try:
                    count, seen, head_line = int(head), -1, number  # -1: the comment line
                except ValueError:
                    if frame and atom_like(head):
                        return frame - 1, (f"line {number} holds an atom after the frame's "
                                           f"atoms: its atom count is smaller than its atoms")
                    return frame, f"line {number} should be the atom count, found {head[:40]!r}"
                if count < 0:
                    return frame, f"line {number}: negative atom count {count}"
            elif seen >= 0 and not atom_like(line):
                return frame, (f"its atom count (line {head_line}) is {count} but line "
                               f"{number} ({line.strip()[:40]!r}) is not atom {seen + 1}'s line")
            else:
                seen += 1
            if count is not None and seen == count:
                frame, count = frame + 1, None
    if count is not None:
        return frame, (f"the file ends inside the frame: its atom count is {count}, "
                       f"{max(seen, 0)} atom lines follow")
    return None


def _check_sqlite(path: Path) -> None:
    """DataError unless ``path`` is an SQLite file holding ASE's table of structures; read
    only (ASE would otherwise create its tables in an empty or foreign file)."""
    import sqlite3

    try:
        with open(path, "rb") as handle:
            magic = handle.read(16)
    except OSError as error:
        raise DataError(f"cannot read ({error.strerror})", source=str(path)) from None
    if magic != b"SQLite format 3\x00":
        raise DataError("not an SQLite database (an ASE .db file)", source=str(path))
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            problems = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise DataError(f"cannot read the database ({error})", source=str(path)) from None
    if problems != [("ok",)]:
        raise DataError(f"the database is damaged ({problems[0][0]})", source=str(path))
    if "systems" not in tables:
        raise DataError("an SQLite file but not an ASE database (no table 'systems')",
                        source=str(path))


def _iter_ase_db(path: Path, select: str | None = None, **keys) -> Iterator[Frame]:
    import sqlite3

    try:
        yield from _read_ase_db(path, select, **keys)
    except (sqlite3.Error, ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read the database ({type(error).__name__}: {error})",
                        source=str(path)) from None


def _read_ase_db(path: Path, select: str | None = None, **keys) -> Iterator[Frame]:
    import ase.db

    _check_sqlite(path)
    with ase.db.connect(str(path), type="db") as db:
        try:
            _check_one_level(db, select, path)
            rows = db.select(select) if select else db.select()
            row = next(rows, None)
        except DataError:
            raise
        except Exception as error:  # ASE raises ValueError/KeyError/SyntaxError on bad queries
            raise DataError(f"database selection {select!r} failed ({error})",
                            source=str(path), field="db_select") from error
        index = 0
        while row is not None:
            if not row.get("failed"):  # a label stored as failed by `mlpot label`: no energy
                yield _frame_from_row(row, path, index, **keys)
            index += 1
            row = next(rows, None)


def _check_one_level(db, select: str | None, path: Path) -> None:
    """DataError if the selected rows hold labels of more than one level of theory (the
    ``level`` `mlpot label` records: engine/method/basis), naming the levels and their rows:
    such labels do not mix in one fit."""
    from collections import Counter

    rows = db.select(select, include_data=False) if select else db.select(include_data=False)
    levels = Counter(row.get("level") for row in rows if not row.get("failed"))
    levels.pop(None, None)  # rows no level was recorded for (not written by `mlpot label`)
    if len(levels) > 1:
        found = ", ".join(f"{level} ({count} rows)" for level, count in sorted(levels.items()))
        first = sorted(levels)[0]
        raise DataError(f"holds labels of {len(levels)} levels of theory: {found}; they do not "
                        f"mix in one data set. Choose one with --select level={first} "
                        f"(data.db_select in a config), or learn the difference to a baseline "
                        f"on purpose (data.delta_baseline)", source=str(path), field="level")


def _frame_from_row(row, path: Path, index: int, **keys) -> Frame:
    atoms = row.toatoms(add_additional_information=True)
    info = dict(row.key_value_pairs)
    info.update(row.data or {})
    for key in (keys.get("energy_key", "energy"),):
        if key in info:
            atoms.info[key] = info[key]
    forces_key = keys.get("forces_key", "forces")
    if forces_key in info:
        atoms.arrays[forces_key] = np.asarray(info[forces_key])
    atoms.info.update({k: v for k, v in info.items() if k in ("charge", "config_type")})
    return frame_from_atoms(atoms, source=str(path), index=index, **keys)


def _iter_npz(path: Path) -> Iterator[Frame]:
    """rMD17-style npz: nuclear_charges, coords (Å), energies (kcal/mol), forces (kcal/mol/Å).

    Object arrays are never loaded (no pickle); shapes are checked before frames are made."""
    field = None
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("nuclear_charges", "coords", "energies") if k not in data]
            if missing:
                raise DataError(f"npz lacks required arrays {missing}", source=str(path),
                                field=missing[0])
            arrays = {}
            for field in ("nuclear_charges", "coords", "energies", "forces"):
                if field in data:
                    kind = np.int64 if field == "nuclear_charges" else np.float64
                    arrays[field] = np.asarray(data[field], dtype=kind)
    except DataError:
        raise
    except Exception as error:  # not a zip, a damaged member, object arrays, wrong types
        raise DataError(f"cannot read ({type(error).__name__}: {error})", source=str(path),
                        field=field) from None
    numbers, coords = arrays["nuclear_charges"], arrays["coords"]
    energies = arrays["energies"] * KCAL_PER_MOL
    forces = arrays["forces"] * KCAL_PER_MOL if "forces" in arrays else None
    if numbers.ndim != 1:
        raise DataError(f"shape {numbers.shape}, expected (n_atoms,)", source=str(path),
                        field="nuclear_charges")
    shape = (len(coords), len(numbers), 3)
    if coords.shape != shape:
        raise DataError(f"shape {coords.shape}, expected (n_frames, {len(numbers)}, 3)",
                        source=str(path), field="coords")
    if energies.shape != shape[:1]:
        raise DataError(f"shape {energies.shape}, expected ({len(coords)},)", source=str(path),
                        field="energies")
    if forces is not None and (forces.ndim != 3 or len(forces) != len(coords)):
        raise DataError(f"shape {forces.shape}, expected {shape}", source=str(path),
                        field="forces")  # a frame's own wrong shape: validate_frame names it
    for i in range(len(coords)):
        yield Frame(numbers=numbers.copy(), positions=coords[i], cell=np.zeros((3, 3)),
                    pbc=np.zeros(3, dtype=bool), energy=float(energies[i]),
                    forces=None if forces is None else forces[i], source=str(path), index=i)


def _iter_raw(path: Path, db_select: str | None, **keys) -> Iterator[Frame]:
    """Unvalidated frames of an extxyz/xyz file, ASE database or rMD17 npz, in file order."""
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    if path.is_dir():
        raise DataError("is a folder, not a data file", source=str(path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _iter_npz(path)
    if suffix in (".db", ".sqlite"):
        return _iter_ase_db(path, db_select, **keys)
    return _iter_ase_file(path, "extxyz" if suffix in (".xyz", ".extxyz") else None, **keys)


def read_frames(path: str | Path, *, energy_key: str = "energy", forces_key: str = "forces",
                stress_key: str = "stress", require_energy: bool = True,
                validate: bool = True, db_select: str | None = None) -> Sequence[Frame]:
    """Read every frame of an extxyz/xyz file, an ASE database (.db) or an rMD17 .npz.

    ``energy_key``/``forces_key`` name the info/arrays entries holding labels (e.g.
    ``REF_energy``); ``energy``/``forces`` are also found on an attached calculator.
    ``db_select`` (ASE databases only) is an ase.db query choosing the rows; rows that
    `mlpot label` stored as failed are skipped.

    An mlpot HDF5 file (``.h5``/``.hdf5``, written by ``mlpot data convert``) is not read
    into memory: the result is a lazy :class:`~mlpot.data.ondisk.HDF5Frames`. Its layout
    is checked when opened and each frame validated when first read (as here); its labels
    were chosen when converted (the keys are ignored here); with ``require_energy`` the
    energy column is checked for missing and infinite values.
    """
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        from mlpot.data.ondisk import HDF5Frames

        frames = HDF5Frames(path)
        if not len(frames):
            raise DataError("contains no structures", source=str(path))
        if require_energy:
            frames.check_energies(field=energy_key)
        return frames
    keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
    frames = list(_iter_raw(path, db_select, **keys))
    if not frames:
        raise DataError("contains no structures", source=str(path))
    if validate:
        for frame in frames:
            validate_frame(frame, require_energy=require_energy, energy_key=energy_key,
                           forces_key=forces_key)
    return frames


def iter_frames(path: str | Path, *, energy_key: str = "energy", forces_key: str = "forces",
                stress_key: str = "stress", require_energy: bool = True,
                db_select: str | None = None) -> Iterator[Frame]:
    """The frames :func:`read_frames` reads (extxyz, ASE db, npz), validated and yielded one
    at a time, so that a file larger than memory can be converted."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:  # already validated when it was written
        yield from read_frames(path, require_energy=require_energy, energy_key=energy_key)
        return
    keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
    count = 0
    for frame in _iter_raw(path, db_select, **keys):
        validate_frame(frame, require_energy=require_energy, energy_key=energy_key,
                       forces_key=forces_key)
        count += 1
        yield frame
    if not count:
        raise DataError("contains no structures", source=str(path))


def validate_frame(frame: Frame, *, require_energy: bool = True, energy_key: str = "energy",
                   forces_key: str = "forces") -> None:
    """Raise DataError if the frame is missing its energy, holds NaN, or has overlapping atoms."""
    where = dict(source=frame.source, frame=frame.index)
    n = len(frame.numbers)
    if n == 0:
        raise DataError("structure has no atoms", field="numbers", **where)
    if np.any(frame.numbers <= 0) or np.any(frame.numbers > 118):
        raise DataError(f"invalid atomic numbers {sorted(set(frame.numbers.tolist()))}",
                        field="numbers", **where)
    if frame.positions.shape != (n, 3) or not np.all(np.isfinite(frame.positions)):
        raise DataError("positions are not finite (n, 3) numbers", field="positions", **where)
    if require_energy and frame.energy is None:
        raise DataError("energy is missing", field=energy_key, **where)
    if frame.energy is not None and not np.isfinite(frame.energy):
        raise DataError(f"energy is {frame.energy}", field=energy_key, **where)
    if frame.forces is not None:
        if frame.forces.shape != (n, 3):
            raise DataError(f"forces have shape {frame.forces.shape}, expected ({n}, 3)",
                            field=forces_key, **where)
        if not np.all(np.isfinite(frame.forces)):
            raise DataError("forces contain NaN or inf", field=forces_key, **where)
    if frame.stress is not None and not np.all(np.isfinite(frame.stress)):
        raise DataError("stress contains NaN or inf", field="stress", **where)
    if frame.dipole is not None and not np.all(np.isfinite(frame.dipole)):
        raise DataError("dipole contains NaN or inf", field="dipole", **where)
    if frame.partial_charges is not None and not np.all(np.isfinite(frame.partial_charges)):
        raise DataError("charges contain NaN or inf", field="charges", **where)
    if not np.all(np.isfinite(frame.cell)) or frame.cell.shape != (3, 3):
        raise DataError("cell is not a finite 3×3 matrix", field="cell", **where)
    if frame.pbc.any() and abs(np.linalg.det(frame.cell[frame.pbc][:, frame.pbc])
                               if frame.pbc.all() else 1.0) < 1e-12:
        raise DataError("periodic structure has a singular cell", field="cell", **where)
    _check_min_distance(frame, where)


def _check_min_distance(frame: Frame, where: dict) -> None:
    from mlpot.neighbors import neighbor_pairs

    if len(frame.numbers) < 2:
        return
    # a tiny cutoff makes vesin's cell grid huge: search at 1 Å and filter
    try:
        i, j, _, distances = neighbor_pairs(frame.positions, frame.cell, frame.pbc, 1.0,
                                            return_distances=True)
    except DataError as error:  # a structure no neighbour search can take (atoms far apart)
        raise DataError(error.detail, field=error.field, **where) from None
    close = distances < MIN_DISTANCE
    i, j, distances = i[close], j[close], distances[close]
    if len(i):
        k = int(np.argmin(distances))
        raise DataError(f"atoms {i[k]} and {j[k]} are {distances[k]:.4f} Å apart "
                        f"(closer than {MIN_DISTANCE} Å)", field="positions", **where)


def check_elements(frames: Sequence[Frame], elements: list[int]) -> None:
    """Raise DataError for the first frame holding an element outside ``elements``."""
    known = set(int(z) for z in elements)
    present = getattr(frames, "elements", None)  # on-disk frames: a cheap column pass first
    if present is not None and set(present()) <= known:
        return
    for frame in frames:
        unknown = set(frame.numbers.tolist()) - known
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in sorted(unknown))
            known_names = ", ".join(chemical_symbols[z] for z in sorted(known))
            raise DataError(f"element(s) {names} unknown to the model (it knows {known_names})",
                            source=frame.source, frame=frame.index, field="numbers")
