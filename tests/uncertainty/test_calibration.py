"""Calibration metrics against closed forms and known distributions."""

import numpy as np
import pytest
from scipy.stats import norm

from mlpot.uncertainty.calibration import (calibration_curve, fit_sigma_scale, gaussian_nll,
                                           miscalibration_area, spearman)


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

