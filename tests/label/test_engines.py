"""Reference engines on tiny molecules: PySCF (HF, DFT, MP2, CCSD(T)) and tblite GFN2-xTB
forces equal finite differences of their own energies; ASE calculators pass through; charge
and spin are read from the structure; failures are returned with their message."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.cluster import Octahedron

from mlpot.label.engines import (ASEEngine, PySCFEngine, XTBEngine, charge_and_spin,
                                 finite_difference_forces)

pytest.importorskip("pyscf")


def _water(shift: float = 0.03, seed: int = 0):
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(seed).normal(0, shift, atoms.positions.shape)
    return atoms


@pytest.mark.parametrize("method", ["hf", "b3lyp", "mp2", "ccsd(t)"])
def test_pyscf_analytic_forces_match_finite_differences(method):
    atoms = _water()
    engine = PySCFEngine(method, "sto-3g")
    label = engine.label(atoms)
    assert not label.failed and label.converged
    assert label.cpu_seconds > 0 and label.wall_seconds > 0
    numerical = finite_difference_forces(engine._energy_ev, atoms, 1e-3)
    np.testing.assert_allclose(label.forces, numerical, atol=2e-4 if method != "b3lyp" else 2e-3)


def test_pyscf_energies_in_ev_and_levels_ordered():
    """HF/STO-3G water near equilibrium is ≈ −74.96 Hartree; correlation lowers the energy
    (MP2 and CCSD(T) below HF), and CCSD(T) ≈ CCSD + a small triples term."""
    atoms = molecule("H2O")
    energies = {m: PySCFEngine(m, "sto-3g", forces="none").label(atoms).energy
                for m in ("hf", "mp2", "ccsd", "ccsd(t)")}
    hartree = 27.211386245988
    assert energies["hf"] / hartree == pytest.approx(-74.96, abs=0.01)
    assert energies["mp2"] < energies["hf"] and energies["ccsd"] < energies["hf"]
    assert -0.05 < energies["ccsd(t)"] - energies["ccsd"] < 0


def test_pyscf_reads_charge_and_spin():
    hydroxide = molecule("OH")
    assert charge_and_spin(hydroxide) == (0, 1)  # odd electron count: a doublet by default
    radical = PySCFEngine("hf", "sto-3g").label(hydroxide)
    hydroxide.info["charge"] = -1
    anion = PySCFEngine("hf", "sto-3g").label(hydroxide)
    assert charge_and_spin(hydroxide) == (-1, 0)
    assert not radical.failed and not anion.failed
    assert anion.energy != pytest.approx(radical.energy, abs=0.1)
    hydroxide.info.update(charge=0, multiplicity=4)  # a quartet OH
    assert charge_and_spin(hydroxide) == (0, 3)


def test_pyscf_failure_is_returned_not_raised():
    not_converged = PySCFEngine("hf", "sto-3g", max_cycle=1).label(_water())
    assert not_converged.failed and not not_converged.converged
    assert "not converged" in not_converged.error and not_converged.energy is None
    bad_basis = PySCFEngine("hf", "no-such-basis").label(_water())
    assert bad_basis.failed and "no-such-basis" in bad_basis.error.lower()


def test_pyscf_finite_difference_opt_in():
    atoms = _water(seed=2)
    analytic = PySCFEngine("hf", "sto-3g").label(atoms)
    numerical = PySCFEngine("hf", "sto-3g", forces="fd").label(atoms)
    np.testing.assert_allclose(numerical.forces, analytic.forces, atol=2e-4)
    assert PySCFEngine("hf", "sto-3g", forces="none").label(atoms).forces is None


def test_xtb_on_ethanol():
    pytest.importorskip("tblite")
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(1).normal(0, 0.03, atoms.positions.shape)
    engine = XTBEngine()
    label = engine.label(atoms)
    assert not label.failed and engine.level == "xtb/gfn2-xtb"
    energy = lambda a: engine.label(a).energy  # noqa: E731
    np.testing.assert_allclose(label.forces, finite_difference_forces(energy, atoms, 1e-3),
                               atol=1e-3)


def test_any_ase_calculator():
    cluster = Octahedron("Cu", 3)
    cluster.rattle(0.05, seed=1)
    label = ASEEngine("ase.calculators.emt:EMT").label(cluster)
    reference = cluster.copy()
    reference.calc = EMT()
    assert label.energy == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(label.forces, reference.get_forces(), atol=1e-12)
    assert ASEEngine("ase.calculators.emt:NoSuchThing").label(cluster).failed
    with pytest.raises(ValueError, match="module:Class"):
        ASEEngine("emt")
