"""fit_linear recovers a LinearModel from labels that another LinearModel generated (float64).

Labels are noise-free, so the closed-form fit must reproduce the generator: its weights
exactly where they are identifiable (one element), and its energies and forces on frames
it was not fitted to where some weight combinations are not (several elements: the pair
sums S_{C}[H] and S_{H}[C] are the same numbers, so only w_C[H] + w_H[C] is determined).
"""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import LinearModel
from mlpot.potential import Potential
from mlpot.train.ridge import fit_linear

E0 = {"H": -13.6, "C": -1030.0, "O": -2040.0, "Si": -107.0}


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids contention on a busy 2-core machine
    torch.set_num_threads(1)
    yield


def _potential(elements, n_radial=3, n_eta=1):
    # one zeta only: with zetas 1 and 2 and λ = ±1 the G4 columns are linearly dependent
    descriptor = SymmetryFunctions(elements, cutoff=4.0, radial=default_radial(4.0, n_radial),
                                   angular=default_angular(4.0, n_eta, (1.0,)))
    symbols = {1: "H", 6: "C", 8: "O", 14: "Si"}
    return Potential(LinearModel(descriptor), {symbols[z]: E0[symbols[z]] for z in elements})


def _generator(elements, seed=0, **kw):
    potential = _potential(elements, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        potential.model.weights.copy_(torch.randn(potential.model.weights.shape, generator=gen,
                                                  dtype=torch.float64) * 0.2)
    return potential


def _label(potential, frames, forces=True):
    """Set each frame's energy (and forces) to the potential's prediction."""
    out = potential(potential.batch(frames, dtype=torch.float64), forces=True,
                    create_graph=False)
    energies = out[keys.ENERGY].detach().numpy()
    split = np.split(out[keys.FORCES].detach().numpy(), np.cumsum([len(f) for f in frames])[:-1])
    for frame, energy, f in zip(frames, energies, split):
        frame.energy = float(energy)
        frame.forces = f.copy() if forces else None
    return frames


def _frame(atoms):
    return Frame(numbers=atoms.numbers.astype(np.int64), positions=atoms.positions.copy(),
                 cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy())


def _silicon(n, seed, rattle=0.3):
    """Rattled, strained two-atom silicon cells (periodic: many images within the cutoff)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Si")
        atoms.set_cell(atoms.cell * rng.uniform(0.94, 1.06), scale_atoms=True)
        atoms.rattle(rattle, seed=seed * 1000 + k)
        frames.append(_frame(atoms))
    return frames


def _molecules(seed):
    rng = np.random.default_rng(seed)
    frames = []
    for name in ["H2O", "CH4", "CO2", "H2CO", "HCOOH", "C2H2"] * 2:
        atoms = molecule(name)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(_frame(atoms))
    return frames


def _predict(potential, frames):
    out = potential(potential.batch(frames, dtype=torch.float64), forces=True,
                    create_graph=False)
    return out[keys.ENERGY].detach().numpy(), out[keys.FORCES].detach().numpy()


def test_single_element_energies_and_forces_recovers_weights():
    generator = _generator([14], seed=1)
    frames = _label(generator, _silicon(4, seed=1))
    fitted = _potential([14])
    # no ridge: the normal equations square the condition number, so few, distinct features
    fit_linear(fitted, frames, sigma_energy=0.001, sigma_force=0.03, ridge=0.0)
    np.testing.assert_allclose(fitted.model.weights.detach().numpy(),
                               generator.model.weights.detach().numpy(), rtol=0, atol=1e-7)
    energy, forces = _predict(fitted, frames)
    np.testing.assert_allclose(energy, [f.energy for f in frames], rtol=0, atol=1e-8)
    np.testing.assert_allclose(forces, np.concatenate([f.forces for f in frames]),
                               rtol=0, atol=1e-8)


def test_single_element_energy_only_recovers_weights():
    generator = _generator([14], seed=2)
    frames = _label(generator, _silicon(16, seed=2), forces=False)
    assert all(f.forces is None for f in frames)
    fitted = _potential([14])
    fit_linear(fitted, frames, sigma_force=None, ridge=0.0)
    np.testing.assert_allclose(fitted.model.weights.detach().numpy(),
                               generator.model.weights.detach().numpy(), rtol=0, atol=1e-7)
    # forces were never fitted, yet they follow from the recovered weights
    held_out = _silicon(2, seed=20)
    energy, forces = _predict(fitted, held_out)
    ref_energy, ref_forces = _predict(generator, held_out)
    np.testing.assert_allclose(energy, ref_energy, rtol=0, atol=1e-7)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=1e-7)


def test_energy_only_fit_ignores_forces_and_picks_ridge_on_validation():
    generator = _generator([14], seed=3)
    frames = _label(generator, _silicon(14, seed=3))
    valid = _label(generator, _silicon(4, seed=30))
    rng = np.random.default_rng(0)
    for frame in frames:  # nonsense forces must not matter to an energy-only fit
        frame.forces = rng.normal(0, 5, frame.forces.shape)
    fitted = _potential([14])
    result = fit_linear(fitted, frames, valid, sigma_force=None, ridge=None)
    assert result["ridge"] in [10.0**k for k in range(-12, 0)]
    assert result["ridge"] <= 1e-6  # noise-free labels want (almost) no shrinkage
    energy, _ = _predict(fitted, valid)
    np.testing.assert_allclose(energy, [f.energy for f in valid], rtol=0, atol=1e-4)


def test_several_elements_reproduce_generator_energies_and_forces():
    generator = _generator([1, 6, 8], seed=4)
    frames = _label(generator, _molecules(seed=4))
    fitted = _potential([1, 6, 8])
    fit_linear(fitted, frames, sigma_energy=0.001, sigma_force=0.03, ridge=1e-13)
    # on the training frames: forces row by row equal the generator's
    energy, forces = _predict(fitted, frames)
    np.testing.assert_allclose(energy, [f.energy for f in frames], rtol=0, atol=1e-7)
    np.testing.assert_allclose(forces, np.concatenate([f.forces for f in frames]),
                               rtol=0, atol=1e-7)
    # on frames it never saw: the weights differ from the generator's only by directions
    # that no structure can see
    held_out = _molecules(seed=40)
    energy, forces = _predict(fitted, held_out)
    ref_energy, ref_forces = _predict(generator, held_out)
    np.testing.assert_allclose(energy, ref_energy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=1e-6)
    # the identifiable combination w_C[H-block] + w_H[C-block] is recovered exactly
    radial = 3

    def cross(weights):
        w = weights.detach().numpy()
        return w[1, 0:radial] + w[0, radial:2 * radial]  # rows H, C, O; blocks H, C, O

    np.testing.assert_allclose(cross(fitted.model.weights), cross(generator.model.weights),
                               rtol=0, atol=1e-6)
    assert fitted.model.weights.dtype == torch.float64


def test_fit_differs_from_generator_when_labels_are_wrong():
    """Guard: the comparisons above would catch a fit that ignores its labels."""
    generator = _generator([14], seed=5)
    frames = _label(generator, _silicon(16, seed=5), forces=False)
    for frame in frames:
        frame.energy += 0.3 * (frame.positions[1, 0] - frame.positions[0, 0])
    fitted = _potential([14])
    fit_linear(fitted, frames, sigma_force=None, ridge=1e-14)
    assert not np.allclose(fitted.model.weights.detach().numpy(),
                           generator.model.weights.detach().numpy(), atol=1e-3)


def test_barely_varying_column_does_not_extrapolate_wildly():
    """A column that barely varies in the training rows (a rare pair's narrow Gaussian) must not
    get a weight fitted to the noise: predicted at 400× its training spread, the fit stays near
    the truth. Reference: the noise-free generator y = 2·x1; plain least squares (the old
    column standardisation gives the same) puts a weight of order noise/spread on x2."""
    from mlpot.train.ridge import ridge_solve

    rng = np.random.default_rng(0)
    n = 400
    x1 = rng.normal(size=n)
    x2 = 1e-6 * rng.normal(size=n)  # barely varies
    x3 = rng.normal(size=n)
    design = torch.tensor(np.stack([x1, x2, x3], 1))
    y = torch.tensor(2.0 * x1 + 0.05 * rng.normal(size=n))
    gram, rhs = design.T @ design, design.T @ y
    w = ridge_solve(gram, rhs, 1e-8).numpy()
    least_squares = np.linalg.lstsq(design.numpy(), y.numpy(), rcond=None)[0]
    assert abs(w[0] - 2.0) < 0.02  # the informative column is fitted as before
    outside = np.array([0.0, 400e-6, 0.0])  # x2 at 400 training spreads
    inside = np.array([0.0, 0.0, 0.0])
    assert abs(outside @ w - inside @ w) < 0.05  # the floor: bounded by the noise level
    # the unfloored solution jumps far more there (why the floor exists)
    assert abs(outside @ least_squares - inside @ least_squares) > 10 * abs(
        outside @ w - inside @ w)
