"""The ASE calculator against the Potential it wraps, ASE's numerical stress, and NVE MD.

Calculator tests use a linear model on a small symmetry-function grid ridge-fitted to acac
energies; the MD test uses a linear model fitted to ASE's EMT for fcc Cu (see
``copper_potential``). Both float64 and quick to build.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.io import read
from ase.stress import full_3x3_to_voigt_6_stress

from helpers import copper_linear_potential

from mlpot import keys
from mlpot.data.records import frame_from_atoms
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.dynamics.md import run_md
from mlpot.errors import ConfigError
from mlpot.models.linear import LinearModel
from mlpot.neighbors import neighbor_pairs
from mlpot.potential import Potential
from mlpot.train.ridge import fit_linear

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
CUTOFF = 4.0  # Å
# a triclinic box in which an acac molecule sees its periodic images within the cutoff
BOX = np.array([[6.5, 0.0, 0.0], [0.8, 9.5, 0.0], [0.4, 0.6, 5.5]])


@pytest.fixture(scope="module")
def potential(acac_frames):
    descriptor = SymmetryFunctions([1, 6, 8], cutoff=CUTOFF, radial=default_radial(CUTOFF, 6),
                                   angular=default_angular(CUTOFF, 2, (1.0, 4.0)),
                                   cutoff_function="polynomial")
    pot = Potential(LinearModel(descriptor), E0).double().eval()
    fit_linear(pot, acac_frames[::4], ridge=1e-8, sigma_force=None)  # energies: fast
    # sanity of the fit on unseen frames: energies and forces of the right size
    test = acac_frames[1::50]
    out = pot(pot.batch(test), forces=True)
    energies = np.array([f.energy for f in test])
    assert np.sqrt(np.mean((out[keys.ENERGY].detach().numpy() - energies) ** 2)) < 0.2  # eV
    reference = np.concatenate([f.forces for f in test])
    assert np.sqrt(np.mean((out[keys.FORCES].detach().numpy() - reference) ** 2)) < 1.0  # eV/Å
    return pot


def direct(potential, frame, stress=False):
    out = potential(potential.batch([frame]), forces=True, stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


def periodic_atoms(frame):
    atoms = frame.to_atoms()
    atoms.positions -= atoms.positions.mean(0)
    atoms.set_cell(BOX)
    atoms.pbc = True
    i, _, shifts = neighbor_pairs(atoms.positions, BOX, atoms.pbc, CUTOFF)
    assert np.any(shifts != 0)  # the images do interact
    return atoms


def test_calculator_matches_potential(potential, acac_frames):
    frame = acac_frames[20]
    atoms = frame.to_atoms()
    atoms.calc = MlpotCalculator(potential)
    ref = direct(potential, frame)
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES], rtol=0, atol=1e-10)
    energies = atoms.get_potential_energies()
    np.testing.assert_allclose(energies, ref[keys.ATOMIC_ENERGY], rtol=0, atol=1e-10)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    # and against the reference labels: a fitted model, so errors are modest
    assert abs(atoms.get_potential_energy() - frame.energy) < 0.5
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # stress needs a periodic cell


def test_calculator_results_are_fresh(potential, acac_frames):
    frame = acac_frames[21]
    atoms = frame.to_atoms()
    atoms.calc = MlpotCalculator(potential)
    first_energy, first_forces = atoms.get_potential_energy(), atoms.get_forces().copy()
    rng = np.random.default_rng(3)
    for _ in range(2):
        atoms.positions = atoms.positions + rng.normal(scale=0.03, size=atoms.positions.shape)
        moved = frame.to_atoms()
        moved.positions = atoms.positions
        ref = direct(potential, frame_from_atoms(moved, source="<test>", index=0))
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert energy == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-9)
        np.testing.assert_allclose(forces, ref[keys.FORCES], rtol=0, atol=1e-10)
    assert abs(energy - first_energy) > 1e-4
    assert np.abs(forces - first_forces).max() > 1e-3
    # calling calculate() directly with other atoms also recomputes
    calc = atoms.calc
    other = acac_frames[22].to_atoms()
    calc.calculate(other, ["energy", "forces"])
    assert calc.results["energy"] == pytest.approx(
        float(direct(potential, acac_frames[22])[keys.ENERGY][0]), abs=1e-9)


def test_stress_through_ase(potential, acac_frames):
    atoms = periodic_atoms(acac_frames[23])
    calc = MlpotCalculator(potential)
    atoms.calc = calc
    stress = atoms.get_stress()  # Voigt xx yy zz yz xz xy, eV/Å³
    ref = direct(potential, frame_from_atoms(atoms, source="<test>", index=0), stress=True)
    np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(ref[keys.STRESS][0]),
                               rtol=0, atol=1e-12)
    assert np.abs(stress).max() > 1e-3
    # ASE's own finite-difference stress (cell and atoms strained together)
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, rtol=0, atol=1e-7)
    # a changed cell gives a fresh stress
    atoms.set_cell(BOX * 1.02, scale_atoms=True)
    assert np.abs(atoms.get_stress() - stress).max() > 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(potential):
    with pytest.raises(ConfigError, match="calculator's device is 'cuda' but torch sees no GPU"):
        MlpotCalculator(copy.deepcopy(potential), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (device runs)")
def test_calculator_on_the_gpu_equals_the_cpu(potential, acac_frames):
    """Energy, forces and stress of the calculator with the model on CUDA = on the CPU."""
    atoms = periodic_atoms(acac_frames[24])
    results = []
    for device in ("cpu", "cuda"):
        atoms.calc = MlpotCalculator(copy.deepcopy(potential), device=device)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    (e_cpu, f_cpu, s_cpu), (e_gpu, f_gpu, s_gpu) = results
    assert e_gpu == pytest.approx(e_cpu, abs=1e-8)
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=0, atol=1e-11)


def test_equivariant_model_through_ase(acac_frames):
    """The e3nn model behind ASE: forces −∂E/∂r and stress equal ASE's finite differences in a
    triclinic cell where the molecule sees its own images."""
    import torch
    from ase.calculators.fd import calculate_numerical_forces

    from mlpot.models import Equivariant

    torch.manual_seed(8)
    model = Equivariant([1, 6, 8], cutoff=CUTOFF, n_features=4, n_rbf=4, l_max=2, hidden_l=1)
    model.set_statistics(0.3, torch.tensor([-0.2, -0.5, -0.4]), mean_neighbours=10.0)
    atoms = periodic_atoms(acac_frames[24])
    atoms.calc = MlpotCalculator(Potential(model, E0))
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-2 and np.abs(stress).max() > 1e-4
    # eps = 1e-4 Å: the difference is 3e-8 eV/Å there, growing as eps² above and as the
    # rounding of the ~1e4 eV total energy (1e-12 eV) / eps below
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), rtol=0,
                               atol=1e-7)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), rtol=0,
                               atol=1e-7)


@pytest.fixture(scope="module")
def copper_potential():
    return copper_linear_potential()


def test_nve_md_conserves_energy(copper_potential, tmp_path):
    potential, atoms = copper_potential
    n_atoms, steps, dt = len(atoms), 300, 0.25  # fs
    result = run_md(atoms, MlpotCalculator(potential), steps=steps, dt=dt, temperature=300.0,
                    ensemble="nve", interval=5, seed=1, progress=False,
                    trajectory=tmp_path / "md.traj")
    totals = np.array(result["total_energies_eV"])
    trajectory = read(tmp_path / "md.traj", index=":")
    kinetic = np.array([a.get_kinetic_energy() for a in trajectory])
    assert len(kinetic) == len(totals)
    drift = result["energy_drift_eV_per_atom_per_ps"]
    duration = steps * dt / 1000  # ps
    print(f"\nNVE fcc Cu ({n_atoms} atoms), dt {dt} fs, {steps} steps: "
          f"drift {drift:.2e} eV/atom/ps, total-energy std {totals.std():.2e} eV, "
          f"kinetic energy {kinetic.mean():.3f} ± {kinetic.std():.3f} eV")
    # kinetic and potential energy are exchanged at the 0.1 eV scale...
    assert kinetic.mean() > 0.1 and np.ptp(kinetic) > 0.1
    # ...while their sum stays put (velocity Verlet error ∝ dt²)
    assert totals.std() < 1e-3 * kinetic.std()
    assert abs(drift) * n_atoms * duration < 1e-3 * kinetic.mean()
    assert np.ptp(totals) < 1e-2 * np.ptp(kinetic)
    # the crystal stays a crystal: every atom keeps 12 neighbours near 2.55 Å
    last = trajectory[-1]
    i, _, _ = neighbor_pairs(last.positions, last.cell.array, last.pbc, 3.0)
    np.testing.assert_array_equal(np.bincount(i, minlength=n_atoms), 12)


def test_cell_relaxation_with_ase_filter(copper_potential):
    """ASE's FrechetCellFilter + BFGS relax a compressed, sheared Cu cell with the model's
    stress and forces to the lattice EMT itself relaxes to (the model was fitted to EMT)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    potential, base = copper_potential
    lattices = {}
    for name, calculator in (("model", MlpotCalculator(potential)), ("emt", EMT())):
        atoms = base.copy()
        atoms.set_cell(atoms.cell @ np.array([[0.97, 0.02, 0], [0, 0.98, 0], [0, 0, 1.01]]),
                       scale_atoms=True)
        atoms.calc = calculator
        assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=300)
        assert np.abs(atoms.get_stress()).max() < 1e-3 and np.abs(atoms.get_forces()).max() < 2e-3
        lattices[name] = atoms.cell.cellpar()
    # cubic again, at EMT's lattice within 1 % (fcc Cu, EMT a = 3.59 Å; the model gives 3.57:
    # it was fitted to energies and forces of ±2 % strained cells, not to stress)
    np.testing.assert_allclose(lattices["model"][3:], 90.0, atol=0.1)
    np.testing.assert_allclose(lattices["model"][:3], lattices["emt"][:3], rtol=1e-2)


@pytest.mark.parametrize("system", ["molecule", "cell"])
def test_skin_neighbor_list_gives_the_same_md(copper_potential, potential, acac_frames, system):
    """MD with the skin neighbour list (searched only when an atom moved > skin/2) follows
    the same trajectory as a search at every step, with far fewer searches; a changed cell
    triggers a new search."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    if system == "cell":
        model, atoms = copper_potential[0], copper_potential[1].copy()
    else:
        model = potential
        frame = acac_frames[0]
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions)
    trajectories = {}
    for skin in (0.0, 1.0):
        copy = atoms.copy()
        MaxwellBoltzmannDistribution(copy, temperature_K=300, rng=np.random.default_rng(3))
        copy.calc = calculator = MlpotCalculator(model, skin=skin)
        energies = []
        dynamics = VelocityVerlet(copy, timestep=0.5 * units.fs)
        dynamics.attach(lambda: energies.append(copy.get_potential_energy()), interval=1)
        dynamics.run(60)
        trajectories[skin] = (np.array(energies), copy.positions.copy(), calculator)
    np.testing.assert_allclose(trajectories[1.0][0], trajectories[0.0][0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(trajectories[1.0][1], trajectories[0.0][1], rtol=0, atol=1e-9)
    neighbors = trajectories[1.0][2].neighbors
    assert trajectories[0.0][2].neighbors is None
    assert 1 <= neighbors.searches < 61 // 4, neighbors.searches  # 61 calls
    if system == "cell":
        searches = neighbors.searches
        strained = copy.copy()
        strained.set_cell(strained.cell * 1.01, scale_atoms=True)
        strained.calc = trajectories[1.0][2]
        strained.get_potential_energy()
        assert neighbors.searches == searches + 1
