"""Calibration metrics against closed forms and known distributions."""

import numpy as np
import pytest
from scipy.stats import norm

from mlpot.data.records import Frame
from mlpot.uncertainty.calibration import (calibration_curve, fit_sigma_scale, gaussian_nll,
                                           miscalibration_area, spearman, spearman_reference,
                                           uncertainty_metrics)


def test_nll_is_the_gaussian_log_density():
    rng = np.random.default_rng(0)
    errors, sigmas = rng.normal(size=50), rng.uniform(0.1, 2.0, 50)
    assert gaussian_nll(errors, sigmas) == pytest.approx(
        -np.mean(norm.logpdf(errors, scale=sigmas)), rel=1e-12)


def test_calibrated_sigmas_have_small_area_and_wrong_ones_large():
    rng = np.random.default_rng(1)
    sigmas = rng.uniform(0.1, 3.0, 20000)
    errors = rng.normal(size=sigmas.size) * sigmas
    expected, observed = calibration_curve(errors, sigmas)
    assert np.abs(observed - expected).max() < 0.02
    assert miscalibration_area(errors, sigmas) < 0.01
    assert miscalibration_area(errors, 5 * sigmas) > 0.3  # far too wide
    assert miscalibration_area(errors, 0.2 * sigmas) > 0.3  # far too narrow
    # the σ explain which errors are large: rank correlation clearly positive
    assert spearman(sigmas, errors) > 0.4
    assert abs(spearman(rng.permutation(sigmas), errors)) < 0.05
    assert spearman(sigmas[:2], errors[:2]) is None


def test_sigma_scale_maximises_the_likelihood():
    """s² = ⟨e²/σ²⟩ is the maximum of the Gaussian likelihood over s; with σ four times too
    small it recovers ≈ 4 and brings the miscalibration area down."""
    rng = np.random.default_rng(3)
    sigmas = rng.uniform(0.5, 2.0, 5000)
    errors = rng.normal(size=sigmas.size) * sigmas
    scale = fit_sigma_scale(errors, sigmas / 4)
    assert scale == pytest.approx(4.0, rel=0.03)
    nll = [gaussian_nll(errors, sigmas / 4 * s) for s in (0.9 * scale, scale, 1.1 * scale)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert miscalibration_area(errors, sigmas / 4) > 0.3
    assert miscalibration_area(errors, sigmas / 4 * scale) < 0.02



def test_spearman_reference_is_what_calibrated_errors_score():
    """Errors drawn from N(0, σ²) themselves (an independent generator) score the reference
    on average; it depends on how much σ varies (near 0 for a constant σ, near 1 for σ over
    decades) and rises when each error is the RMS of many components."""
    rng = np.random.default_rng(7)
    sigmas = np.exp(rng.normal(0, 0.6, 400))
    observed = np.mean([spearman(sigmas, rng.normal(size=400) * sigmas) for _ in range(300)])
    assert spearman_reference(sigmas) == pytest.approx(observed, abs=0.01)
    assert 0.4 < spearman_reference(sigmas) < 0.6
    assert abs(spearman_reference(1 + 1e-6 * rng.normal(size=400))) < 0.02
    assert spearman_reference(np.exp(rng.normal(0, 4, 400))) > 0.9
    rms = lambda k: np.sqrt(np.mean(rng.normal(size=(400, k)) ** 2, axis=1))  # noqa: E731
    observed_45 = np.mean([spearman(sigmas, rms(45) * sigmas) for _ in range(100)])
    assert spearman_reference(sigmas, 45) == pytest.approx(observed_45, abs=0.01)
    assert spearman_reference(sigmas, 45) > spearman_reference(sigmas) + 0.3


def test_structure_force_spearman_is_over_rms_values():
    """Per structure: Spearman of the RMS force σ with the RMS force error, computed by hand."""
    rng = np.random.default_rng(2)
    frames, forces, stds = [], [], []
    for n in rng.integers(2, 6, 30):
        reference = rng.normal(size=(n, 3))
        frames.append(Frame(numbers=np.ones(n, int), positions=rng.normal(size=(n, 3)) * 3,
                            cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=0.0,
                            forces=reference))
        std = np.full((n, 3), rng.uniform(0.1, 1.0))
        stds.append(std)
        forces.append(reference + std * rng.normal(size=(n, 3)))
    predicted = {"energy": rng.normal(size=30), "energy_std": np.ones(30),
                 "forces": forces, "forces_std": stds}
    metrics = uncertainty_metrics(frames, predicted)
    by_hand = spearman([np.sqrt(np.mean(s**2)) for s in stds],
                       [np.sqrt(np.mean((f - fr.forces) ** 2)) for f, fr in zip(forces, frames)])
    assert metrics["spearman_force_structure"] == pytest.approx(by_hand, abs=1e-12)
    assert metrics["spearman_force_structure_reference"] > 0.5
