"""LAMMPS driving a calculator through mlpot.dynamics.lammps (``fix external``), checked
against LAMMPS' own pair style (same physics, LAMMPS' forces and virial) and against ASE's
velocity Verlet with an mlpot model (same model, ASE's integrator)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.lj import LennardJones
from ase.io.lammpsdata import write_lammps_data
from ase.md.verlet import VelocityVerlet
from helpers import copper_linear_potential

from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.dynamics.lammps import couple, open_lammps
from mlpot.dynamics.md import thermalize
from mlpot.uncertainty.ensemble import Ensemble

pytest.importorskip("lammps")

# argon in a triclinic periodic box, random positions at least 3 Å apart
ARGON = """
units metal
atom_style atomic
boundary p p p
region box prism 0 10.2 0 9.6 0 9.9 1.1 -0.7 0.5
create_box 1 box
create_atoms 1 random 40 4928 NULL overlap 3.0 maxtry 200
mass 1 39.948
velocity all create 120.0 4928 loop geom
timestep 0.002
fix nve all nve
thermo_style custom step pe etotal press pxx pyy pzz pxy pxz pyz
"""
PRESSURE = ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")


def local(lmp, name: str) -> np.ndarray:
    """A per-atom LAMMPS array of the local atoms, ordered by atom ID."""
    n = lmp.extract_setting("nlocal")
    ids = lmp.numpy.extract_atom("id")[:n]
    return np.array(lmp.numpy.extract_atom(name)[:n])[np.argsort(ids)]


def run_argon(through_mlpot: bool) -> dict:
    lmp = open_lammps()
    lmp.commands_string(ARGON)
    if through_mlpot:
        callback = couple(lmp, LennardJones(sigma=3.40, epsilon=0.0104, rc=6.0, smooth=False),
                          ["Ar"])
    else:
        lmp.commands_string("pair_style lj/cut 6.0\npair_coeff 1 1 0.0104 3.40\n"
                            "pair_modify shift yes")  # ASE's LJ shifts the energy too
    lmp.command("run 0")
    start = {key: lmp.get_thermo(key) for key in ("pe",) + PRESSURE}
    forces = local(lmp, "f")
    lmp.command("run 100")
    result = {"start": start, "forces": forces, "x": local(lmp, "x"),
              "etotal": lmp.get_thermo("etotal")}
    if through_mlpot:
        assert callback.calls == 1 + 101  # each run: one call at setup, then one per step
    lmp.close()
    return result


def test_lennard_jones_through_the_coupling_equals_lammps_own():
    """Same energy, pressure tensor, forces and 100-step trajectory as LAMMPS' lj/cut, in a
    triclinic periodic box: the box, atom order, units and virial pass through correctly."""
    native, coupled = run_argon(False), run_argon(True)
    assert abs(native["start"]["pe"]) > 0.1  # eV: the atoms interact
    for key, value in native["start"].items():
        assert coupled["start"][key] == pytest.approx(value, rel=1e-9, abs=1e-6), key
    np.testing.assert_allclose(coupled["forces"], native["forces"], atol=1e-10)
    np.testing.assert_allclose(coupled["x"], native["x"], atol=1e-8)
    assert coupled["etotal"] == pytest.approx(native["etotal"], abs=1e-8)


def lammps_from_atoms(atoms, path) -> object:
    """LAMMPS (metal units) holding ``atoms`` with their masses and velocities."""
    write_lammps_data(path, atoms, specorder=["Cu"], masses=True, velocities=True,
                      units="metal", write_image_flags=True)
    lmp = open_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nboundary p p p\nread_data {path}\n"
                        "fix nve all nve\nthermo_style custom step pe ke etotal pxx pyy pzz "
                        "pxy pxz pyz\ntimestep 0.001")
    return lmp


@pytest.fixture(scope="module")
def copper():
    """The EMT-fitted Cu model (tests/helpers.py) and a rattled, sheared cell at 300 K. The
    cell is lower triangular, LAMMPS' own form, so LAMMPS' coordinates are ASE's."""
    potential, base = copper_linear_potential()
    atoms = base.copy()
    cell = atoms.cell.array.copy()
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.35, -0.25, 0.2
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    atoms.positions -= [1.0, 0.5, 0.0]  # some atoms outside the cell: non-zero image flags
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(4))
    return potential, atoms


def test_mlpot_model_in_lammps_follows_ase_md(copper, tmp_path):
    """An mlpot model in LAMMPS (fix nve) gives ASE's energy, stress and forces, and 50
    steps of LAMMPS' velocity Verlet the trajectory of ASE's."""
    potential, atoms = copper
    lmp = lammps_from_atoms(atoms, tmp_path / "cu.data")
    callback = couple(lmp, MlpotCalculator(potential), ["Cu"])
    lmp.command("run 0")
    np.testing.assert_allclose(callback.atoms.positions, atoms.positions, atol=1e-9)

    reference = atoms.copy()
    reference.calc = MlpotCalculator(potential)
    assert lmp.get_thermo("pe") == pytest.approx(reference.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(local(lmp, "f"), reference.get_forces(), atol=1e-9)
    # pressure (bar) = −stress + kinetic part; compare the configurational part
    kinetic = np.einsum("i,ia,ib->ab", reference.get_masses(), reference.get_velocities(),
                        reference.get_velocities()) / reference.get_volume()
    pressure = -reference.get_stress(voigt=False) + kinetic  # eV/Å³
    expected = [pressure[0, 0], pressure[1, 1], pressure[2, 2], pressure[0, 1],
                pressure[0, 2], pressure[1, 2]]
    for key, value in zip(PRESSURE, expected):
        assert lmp.get_thermo(key) == pytest.approx(value / units.bar, rel=1e-6, abs=1e-3), key

    lmp.command("run 50")
    VelocityVerlet(reference, timestep=1.0 * units.fs).run(50)
    # what the model saw: LAMMPS' positions unwrapped by their image flags, ASE's positions
    np.testing.assert_allclose(callback.atoms.positions, reference.positions, atol=1e-6)
    assert np.abs(reference.positions - atoms.positions).max() > 0.02  # atoms did move
    lmp.close()


def test_ensemble_sigma_reaches_thermo(copper, tmp_path):
    """With an ensemble the fix's vector holds the largest atomic force σ and the energy σ
    of the current step, as the calculator computes them, and the failure flag stays 0."""
    potential, atoms = copper
    ensemble = Ensemble([potential, copper_linear_potential(seed=1)[0]])
    lmp = lammps_from_atoms(atoms, tmp_path / "cu.data")
    calculator = MlpotCalculator(ensemble)
    couple(lmp, calculator, ["Cu"], fix_id="model")
    lmp.commands_string("thermo_style custom step pe f_model[1] f_model[2] f_model[3]\nrun 5")
    sigma = np.linalg.norm(calculator.results["forces_std"], axis=1).max()
    assert sigma > 1e-4  # eV/Å: the two members disagree
    thermo = lmp.last_thermo()  # the last thermo line's values (step 5)
    assert thermo["f_model[1]"] == pytest.approx(sigma, rel=1e-9)
    assert thermo["f_model[2]"] == pytest.approx(calculator.results["energy_std"], rel=1e-9)
    assert thermo["f_model[3]"] == 0.0
    lmp.close()


def test_units_other_than_metal_are_refused():
    lmp = open_lammps()
    lmp.commands_string("units real\nregion box block 0 5 0 5 0 5\ncreate_box 1 box")
    with pytest.raises(ValueError, match="units metal"):
        couple(lmp, LennardJones(), ["Ar"])
    lmp.close()


class FailsAtCall(LennardJones):
    """ASE's Lennard-Jones that raises at its n-th call."""

    def __init__(self, n: int):
        super().__init__(sigma=3.40, epsilon=0.0104, rc=6.0)
        self.n, self.count = n, 0

    def calculate(self, *args, **kwargs):
        self.count += 1
        if self.count == self.n:
            raise RuntimeError("the model broke")
        super().calculate(*args, **kwargs)


def test_a_failing_model_stops_lammps_with_an_error():
    """An exception inside the callback (which ctypes would swallow, leaving LAMMPS to go on
    with stale forces) ends the run with a LAMMPS error at that step."""
    lmp = open_lammps()
    lmp.commands_string(ARGON)
    callback = couple(lmp, FailsAtCall(4), ["Ar"])
    with pytest.raises(Exception, match="[Hh]alt"):
        lmp.command("run 20")
    assert isinstance(callback.error, RuntimeError)
    assert lmp.extract_global("ntimestep") == 3  # setup call, then steps 1, 2; 3 failed
    lmp.close()
