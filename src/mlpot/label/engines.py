"""Reference engines that label one structure: PySCF, tblite (GFN2-xTB), any ASE calculator.

Every engine is a small picklable object (it travels to Dask workers) with a ``level`` string
naming what it computes (``pyscf/ccsd(t)/cc-pvdz``, ``xtb/gfn2-xtb``, ``ase/emt``) and a
``label(atoms)`` method returning a :class:`Label`: energy (eV) and forces (eV/Å) in ASE units,
whether the calculation converged, wall and CPU seconds, and on failure the error message.
Failures are returned, not raised: the caller stores them as failed, and never retries them
without being asked.

Charge and spin come from ``atoms.info``: ``charge`` (e, default 0) and ``spin`` = 2S, the
number of unpaired electrons (PySCF's convention; ``multiplicity`` = 2S + 1 is also read).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
import traceback

import numpy as np
from ase import Atoms, units

PYSCF_METHODS = ("hf", "mp2", "ccsd", "ccsd(t)")  # anything else is a DFT functional
FORCE_MODES = ("auto", "analytic", "none", "fd")


@dataclasses.dataclass
class Label:
    """The outcome of labelling one structure."""

    energy: float | None  # eV
    forces: np.ndarray | None  # (n, 3) eV/Å
    converged: bool
    wall_seconds: float
    cpu_seconds: float  # of the process that ran it (its worker runs one task at a time)
    error: str | None = None  # message of a failure (exception or no convergence)

    @property
    def failed(self) -> bool:
        return self.error is not None


def charge_and_spin(atoms: Atoms) -> tuple[int, int]:
    """(total charge e, 2S) from atoms.info; 2S defaults to the parity of the electron count."""
    charge = int(round(float(atoms.info.get("charge", 0))))
    if "spin" in atoms.info:
        spin = int(atoms.info["spin"])
    elif "multiplicity" in atoms.info:
        spin = int(atoms.info["multiplicity"]) - 1
    else:
        spin = int(atoms.numbers.sum() - charge) % 2
    return charge, spin


def _timed(compute, atoms: Atoms) -> Label:
    """Run ``compute(atoms) -> (energy, forces, converged, message)``, timing it and turning
    exceptions into a failed label."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        energy, forces, converged, message = compute(atoms)
    except Exception as error:  # any engine error is recorded with its message
        energy, forces, converged = None, None, False
        message = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
    return Label(energy=energy, forces=forces, converged=converged,
                 wall_seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu,
                 error=message)


def finite_difference_forces(energy_of, atoms: Atoms, step: float = 1e-3) -> np.ndarray:
    """−∂E/∂r by central differences (6N energies), eV/Å; ``energy_of(atoms) -> eV``."""
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for alpha in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, alpha] += sign * step
                energies.append(energy_of(moved))
            forces[i, alpha] = -(energies[0] - energies[1]) / (2 * step)
    return forces


@dataclasses.dataclass
class PySCFEngine:
    """PySCF: HF, DFT (any functional name libxc knows, e.g. "b3lyp", "pbe0"), MP2, CCSD,
    CCSD(T); restricted for closed shells, unrestricted otherwise.

    forces: "auto" (analytic gradients where PySCF has them: HF, DFT, MP2, CCSD, and CCSD(T)
    for closed shells; else none), "analytic" (fail if there are none), "none", or "fd"
    (central finite differences of the energy, 6N extra calculations: an explicit opt-in).
    """

    method: str = "hf"
    basis: str = "sto-3g"
    forces: str = "auto"
    max_cycle: int = 100  # SCF iterations before the label is recorded as not converged
    conv_tol: float = 1e-9  # Hartree
    threads: int = 1
    fd_step: float = 1e-3  # Å

    def __post_init__(self):
        self.method = self.method.lower()
        if self.forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {FORCE_MODES}, not {self.forces!r}")

    @property
    def level(self) -> str:
        return f"pyscf/{self.method}/{self.basis.lower()}"

    def describe(self) -> dict:
        return {"engine": "pyscf", "method": self.method, "basis": self.basis.lower()}

    def label(self, atoms: Atoms) -> Label:
        return _timed(self._compute, atoms)

    def _molecule(self, atoms: Atoms):
        from pyscf import gto

        if atoms.pbc.any():
            raise ValueError("PySCFEngine labels molecules; periodic cells need pyscf.pbc")
        charge, spin = charge_and_spin(atoms)
        return gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist())),
                     unit="Angstrom", basis=self.basis, charge=charge, spin=spin, verbose=0)

    def _solve(self, atoms: Atoms):
        """(energy Hartree, a function returning the analytic gradient (n, 3) Hartree/Bohr or
        None where there is none, converged, message)."""
        from pyscf import cc, dft, lib, mp, scf

        lib.num_threads(self.threads)
        mol = self._molecule(atoms)
        open_shell = mol.spin != 0
        if self.method in PYSCF_METHODS:
            mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
            mf.xc = self.method
        mf.max_cycle, mf.conv_tol = self.max_cycle, self.conv_tol
        energy = mf.kernel()
        if not mf.converged:
            return None, None, False, f"SCF not converged in {self.max_cycle} cycles"
        if self.method == "mp2":
            post = mp.MP2(mf)
            post.kernel()
            return post.e_tot, lambda: post.nuc_grad_method().kernel(), True, None
        if self.method in ("ccsd", "ccsd(t)"):
            post = cc.CCSD(mf)
            post.conv_tol, post.conv_tol_normt = self.conv_tol, self.conv_tol**0.5
            post.kernel()
            if not post.converged:
                return None, None, False, "CCSD amplitudes not converged"
            if self.method == "ccsd":
                return post.e_tot, lambda: post.nuc_grad_method().kernel(), True, None
            triples = post.ccsd_t()
            gradient = None if open_shell else (lambda: _ccsd_t_gradient(post))
            return post.e_tot + triples, gradient, True, None
        return energy, lambda: mf.nuc_grad_method().kernel(), True, None

    def _compute(self, atoms: Atoms):
        energy, gradient, converged, message = self._solve(atoms)
        if not converged:
            return None, None, False, message
        forces = None
        if self.forces in ("auto", "analytic") and gradient is not None:
            forces = -np.asarray(gradient()) * units.Hartree / units.Bohr
        elif self.forces == "analytic":
            return None, None, False, f"no analytic gradient for {self.level} here"
        elif self.forces == "fd":
            forces = finite_difference_forces(self._energy_ev, atoms, self.fd_step)
        return energy * units.Hartree, forces, True, None

    def _energy_ev(self, atoms: Atoms) -> float:
        energy, _, converged, message = self._solve(atoms)
        if not converged:
            raise RuntimeError(f"finite differences: {message}")
        return energy * units.Hartree


def _ccsd_t_gradient(ccsd) -> np.ndarray:
    """Analytic closed-shell CCSD(T) gradient (Hartree/Bohr). It needs the (T) Λ amplitudes:
    PySCF's Gradients(...).kernel() alone solves the CCSD Λ equations and then misses about
    half of the (T) force contribution (checked against finite differences in the tests).
    Open shells get no analytic (T) gradient: PySCF's UCCSD(T) one disagrees with finite
    differences (pyscf issue 3305)."""
    from pyscf.cc import ccsd_t_lambda
    from pyscf.grad import ccsd_t

    eris = ccsd.ao2mo()
    _, l1, l2 = ccsd_t_lambda.kernel(ccsd, eris, ccsd.t1, ccsd.t2, verbose=0)
    return ccsd_t.Gradients(ccsd).kernel(l1=l1, l2=l2, eris=eris)


@dataclasses.dataclass
class XTBEngine:
    """tblite's GFN2-xTB (or GFN1-xTB) through its ASE calculator; analytic forces."""

    method: str = "GFN2-xTB"
    accuracy: float = 1.0
    max_iterations: int = 250

    @property
    def level(self) -> str:
        return f"xtb/{self.method.lower()}"

    def describe(self) -> dict:
        return {"engine": "xtb", "method": self.method, "basis": ""}

    def label(self, atoms: Atoms) -> Label:
        return _timed(self._compute, atoms)

    def _compute(self, atoms: Atoms):
        from tblite.ase import TBLite

        charge, spin = charge_and_spin(atoms)
        atoms = atoms.copy()
        atoms.calc = TBLite(method=self.method, charge=charge, multiplicity=spin + 1,
                            accuracy=self.accuracy, max_iterations=self.max_iterations,
                            verbosity=0)
        energy = atoms.get_potential_energy()  # tblite raises if the SCC does not converge
        return float(energy), atoms.get_forces(), True, None


@dataclasses.dataclass
class ASEEngine:
    """Any ASE calculator, named ``module:Class`` (e.g. ``ase.calculators.emt:EMT``) with
    keyword arguments; forces when the calculator implements them."""

    calculator: str = "ase.calculators.emt:EMT"
    arguments: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if ":" not in self.calculator:
            raise ValueError(f"calculator must be 'module:Class', not {self.calculator!r}")

    @property
    def level(self) -> str:
        return f"ase/{self.calculator.split(':')[1].lower()}"

    def describe(self) -> dict:
        import json

        return {"engine": "ase", "method": self.calculator, "basis": "",
                "arguments": json.dumps(self.arguments, sort_keys=True)}

    def build(self):
        module, name = self.calculator.split(":")
        return getattr(importlib.import_module(module), name)(**self.arguments)

    def label(self, atoms: Atoms) -> Label:
        return _timed(self._compute, atoms)

    def _compute(self, atoms: Atoms):
        atoms = atoms.copy()
        atoms.calc = self.build()
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces() if "forces" in atoms.calc.implemented_properties else None
        return energy, forces, True, None
