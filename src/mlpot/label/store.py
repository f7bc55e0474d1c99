"""Labels in an ASE database (SQLite): one row per (structure, level), written as they finish.

A row holds the structure, its energy and forces (as a single-point calculator, so that
``mlpot train --train labels.db`` and ``ase db`` read them) and these key-value pairs:

    structure_key  SHA-1 of numbers, positions (rounded to 1e-6 Å), cell, pbc, charge and
                   spin, as read from the input (the same file read again gives the same keys)
    level          e.g. "pyscf/ccsd(t)/cc-pvdz": what was computed
    engine, method, basis
    converged, failed   bools; a failed row has no energy and keeps its message in data.error
    wall_seconds, cpu_seconds
    source         input file and frame index it came from

(structure_key, level) is unique: a restarted run skips what is stored, so nothing finished is
computed twice or lost. Each row is its own SQLite transaction.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlpot.label.engines import Label, charge_and_spin


def structure_key(atoms: Atoms) -> str:
    """Content hash of a structure (positions rounded to 1e-6 Å) with its charge and spin."""
    charge, spin = charge_and_spin(atoms)
    digest = hashlib.sha1()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.round(atoms.positions, 6).astype(np.float64).tobytes() + b"|")
    digest.update(np.round(atoms.cell.array, 6).astype(np.float64).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    digest.update(f"{charge}|{spin}".encode())
    return digest.hexdigest()


class LabelStore:
    """An ASE database of labels; see the module docstring for the row layout."""

    def __init__(self, path: str | Path):
        import ase.db

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # no ASE lock file: it is created exclusively and a writer killed while holding it
        # (kill -9) would leave it behind and block every restart; SQLite's own locks die
        # with their process, and only one process (the runner's client) writes
        self.db = ase.db.connect(str(self.path), type="db", use_lock_file=False)

    def done(self, level: str, failed_too: bool = True) -> set[str]:
        """structure_keys stored for ``level`` (with failed rows unless ``failed_too`` is
        False)."""
        rows = self.db.select(level=level) if failed_too else self.db.select(level=level,
                                                                             failed=False)
        return {row.structure_key for row in rows}

    def write(self, atoms: Atoms, key: str, level: str, description: dict, label: Label,
              source: str) -> bool:
        """Store one label; False (and nothing written) if (key, level) is already there."""
        if self.db.count(structure_key=key, level=level):
            return False
        atoms = atoms.copy()
        atoms.calc = None
        if not label.failed:
            atoms.calc = SinglePointCalculator(atoms, energy=label.energy, forces=label.forces)
        pairs = {"structure_key": key, "level": level, "converged": bool(label.converged),
                 "failed": label.failed, "wall_seconds": float(label.wall_seconds),
                 "cpu_seconds": float(label.cpu_seconds), "source": source,
                 **{k: str(v) for k, v in description.items()}}
        charge, spin = charge_and_spin(atoms)
        pairs.update(charge=charge, spin=spin)
        self.db.write(atoms, key_value_pairs=pairs,
                      data={"error": label.error} if label.failed else {})
        return True

    def rows(self, **selection):
        return list(self.db.select(**selection))
