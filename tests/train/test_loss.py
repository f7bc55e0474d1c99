"""EnergyForceLoss = mean over observations of squared standardised residuals.

Observations per structure: one energy (per-atom residual over σ_E), its 3N force
components over σ_F when it has forces, 6 stress components over σ_S when given.
The reference value is computed with plain Python loops over numbers.
"""

import math

import pytest
import torch

from mlpot import keys
from mlpot.train.loss import EnergyForceLoss

SIGMA_E, SIGMA_F, SIGMA_S = 0.002, 0.05, 0.004


def _batch(n_atoms, has_forces, seed=0, stress=False):
    gen = torch.Generator().manual_seed(seed)
    n_total = sum(n_atoms)
    batch = {
        keys.N_ATOMS: torch.tensor(n_atoms),
        keys.BATCH: torch.repeat_interleave(torch.arange(len(n_atoms)), torch.tensor(n_atoms)),
        keys.ENERGY: torch.randn(len(n_atoms), generator=gen, dtype=torch.float64) * 3 - 100,
    }
    prediction = {keys.ENERGY: batch[keys.ENERGY]
                  + torch.randn(len(n_atoms), generator=gen, dtype=torch.float64) * 0.01}
    if any(has_forces):
        batch[keys.HAS_FORCES] = torch.tensor(has_forces)
        forces = torch.randn(n_total, 3, generator=gen, dtype=torch.float64)
        for b, has in enumerate(has_forces):  # placeholders (zeros) where there are none
            if not has:
                forces[batch[keys.BATCH] == b] = 0.0
        batch[keys.FORCES] = forces
    prediction[keys.FORCES] = torch.randn(n_total, 3, generator=gen, dtype=torch.float64)
    if stress:
        batch[keys.STRESS] = torch.randn(len(n_atoms), 3, 3, generator=gen,
                                         dtype=torch.float64) * 0.01
        prediction[keys.STRESS] = torch.randn(len(n_atoms), 3, 3, generator=gen,
                                              dtype=torch.float64) * 0.01
    return prediction, batch


def _hand_loss(prediction, batch, n_atoms, has_forces, stress=False):
    """Σ squared standardised residuals / number of observations, by explicit loops."""
    total, count = 0.0, 0
    atom = 0
    for b, n in enumerate(n_atoms):
        de = float(prediction[keys.ENERGY][b]) - float(batch[keys.ENERGY][b])
        total += (de / n / SIGMA_E) ** 2
        count += 1
        if has_forces[b]:
            for i in range(atom, atom + n):
                for a in range(3):
                    df = float(prediction[keys.FORCES][i, a]) - float(batch[keys.FORCES][i, a])
                    total += (df / SIGMA_F) ** 2
                    count += 1
        atom += n
        if stress:  # six independent components of the symmetric tensor
            for a, c in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
                ds = float(prediction[keys.STRESS][b, a, c]) - float(batch[keys.STRESS][b, a, c])
                total += (ds / SIGMA_S) ** 2
                count += 1
    return total / count, count


def test_single_structure_energy_and_forces():
    prediction, batch = _batch([3], [True])
    loss, parts = EnergyForceLoss(SIGMA_E, SIGMA_F)(prediction, batch)
    expected, count = _hand_loss(prediction, batch, [3], [True])
    assert count == 1 + 9
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    de = float(prediction[keys.ENERGY][0] - batch[keys.ENERGY][0])
    assert parts["energy"] == pytest.approx((de / 3 / SIGMA_E) ** 2, rel=1e-12)


def test_all_with_forces():
    n_atoms = [2, 5, 1]
    prediction, batch = _batch(n_atoms, [True] * 3, seed=1)
    loss, _ = EnergyForceLoss(SIGMA_E, SIGMA_F)(prediction, batch)
    expected, count = _hand_loss(prediction, batch, n_atoms, [True] * 3)
    assert count == 3 + 3 * 8
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_mixed_batch_energy_only_frames_add_only_their_energy():
    n_atoms, has = [2, 3, 4, 1], [True, False, True, False]
    prediction, batch = _batch(n_atoms, has, seed=2)
    loss_fn = EnergyForceLoss(SIGMA_E, SIGMA_F)
    loss, parts = loss_fn(prediction, batch)
    expected, count = _hand_loss(prediction, batch, n_atoms, has)
    assert count == 4 + 3 * (2 + 4)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # the zero placeholders of energy-only frames play no part
    changed = dict(batch)
    changed[keys.FORCES] = batch[keys.FORCES].clone()
    changed[keys.FORCES][2:5] = 123.0  # atoms of structure 1 (no forces)
    assert float(loss_fn(prediction, changed)[0]) == pytest.approx(float(loss), rel=1e-14)
    # while changing a real force does change it
    changed[keys.FORCES][0, 0] += 1.0
    assert float(loss_fn(prediction, changed)[0]) != pytest.approx(float(loss), rel=1e-6)
    assert set(parts) == {"energy", "forces"}


def test_energy_only_batch():
    n_atoms = [4, 2]
    prediction, batch = _batch(n_atoms, [False, False], seed=3)
    assert keys.FORCES not in batch
    loss, parts = EnergyForceLoss(SIGMA_E, SIGMA_F)(prediction, batch)
    expected, count = _hand_loss(prediction, batch, n_atoms, [False, False])
    assert count == 2
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert set(parts) == {"energy"}


def test_with_stress():
    n_atoms, has = [2, 3], [True, False]
    prediction, batch = _batch(n_atoms, has, seed=4, stress=True)
    loss, _ = EnergyForceLoss(SIGMA_E, SIGMA_F, SIGMA_S)(prediction, batch)
    expected, count = _hand_loss(prediction, batch, n_atoms, has, stress=True)
    assert count == 2 + 6 + 2 * 6
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_with_dipoles():
    """Each reference dipole adds 3 observations (Δμ_α/σ_μ)²; structures without one none."""
    n_atoms, has = [2, 3], [True, True]
    prediction, batch = _batch(n_atoms, has, seed=6)
    generator = torch.Generator().manual_seed(6)
    batch[keys.DIPOLE] = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    batch[keys.HAS_DIPOLE] = torch.tensor([True, False])
    prediction[keys.DIPOLE] = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    sigma = 0.02
    loss, parts = EnergyForceLoss(SIGMA_E, SIGMA_F, sigma_dipole=sigma)(prediction, batch)
    plain, count = _hand_loss(prediction, batch, n_atoms, has)
    dipole = (((prediction[keys.DIPOLE] - batch[keys.DIPOLE])[0] / sigma) ** 2).sum()
    assert float(loss) == pytest.approx((plain * count + float(dipole)) / (count + 3),
                                        rel=1e-12)
    assert parts["dipole"] == pytest.approx(float(dipole) / 3)


def test_perfect_prediction_is_zero_and_gradient_flows():
    n_atoms = [3, 2]
    prediction, batch = _batch(n_atoms, [True, True], seed=5)
    exact = {keys.ENERGY: batch[keys.ENERGY].clone(), keys.FORCES: batch[keys.FORCES].clone()}
    assert float(EnergyForceLoss()(exact, batch)[0]) == 0.0
    energy = prediction[keys.ENERGY].clone().requires_grad_(True)
    loss, _ = EnergyForceLoss(SIGMA_E, SIGMA_F)({**prediction, keys.ENERGY: energy}, batch)
    loss.backward()
    # d/dE_b of (ΔE_b/(N_b σ))² / count = 2 ΔE_b / (N_b σ)² / count
    count = 2 + 3 * 5
    de = (prediction[keys.ENERGY] - batch[keys.ENERGY]).tolist()
    expected = [2 * d / (n * SIGMA_E) ** 2 / count for d, n in zip(de, n_atoms)]
    assert energy.grad.tolist() == pytest.approx(expected, rel=1e-10)
    assert math.isfinite(float(loss.detach()))
