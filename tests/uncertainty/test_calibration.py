"""Calibration metrics against closed forms and known distributions."""

import numpy as np
import pytest
from scipy.stats import norm

from mlpot.data.records import Frame
from mlpot.uncertainty.calibration import (SigmaCalibration, calibration_curve,
                                           fit_calibration, fit_sigma_scale, gaussian_nll,
                                           miscalibration_area, spearman, spearman_reference,
                                           uncertainty_metrics, watchdog_force_sigma)


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


def test_watchdog_sigma_is_the_mean_and_quantile_of_each_structures_largest_atom():
    """force_sigma_max_atom: per structure the largest √(σx² + σy² + σz²) over its atoms,
    by loops, averaged (and its 95 % quantile, by sorting) over structures, in meV/Å; it is
    taken from the epistemic σ, also for structures without reference forces."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 9, 41)
    epistemic = [rng.uniform(0.0, 0.2, (n, 3)) for n in sizes]
    frames = [Frame(numbers=np.ones(n, int), positions=rng.normal(size=(n, 3)) * 3,
                    cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=0.0,
                    forces=None if k % 3 else np.zeros((n, 3))) for k, n in enumerate(sizes)]
    predicted = {"energy": rng.normal(size=41), "energy_std": np.ones(41),
                 "energy_std_epistemic": np.ones(41),
                 "forces": [rng.normal(size=(n, 3)) for n in sizes],
                 "forces_std": [2 * s for s in epistemic],  # total σ: not what md compares
                 "forces_std_epistemic": epistemic}
    largest = []
    for sigma in epistemic:
        norms = [np.sqrt(sum(component**2 for component in atom)) for atom in sigma]
        largest.append(1000 * max(norms))
    ordered = sorted(largest)
    position = 0.95 * (len(ordered) - 1)  # linear interpolation between order statistics
    low = int(position)
    p95 = ordered[low] + (position - low) * (ordered[low + 1] - ordered[low])
    metrics = uncertainty_metrics(frames, predicted)
    assert metrics["force_sigma_max_atom"] == pytest.approx(sum(largest) / len(largest),
                                                            rel=1e-12)
    assert metrics["force_sigma_max_atom_p95"] == pytest.approx(p95, rel=1e-12)
    # a per-atom calibration (three equal components): √3 × the per-component σ
    same = [np.repeat(s[:, :1], 3, axis=1) for s in epistemic]
    watchdog = watchdog_force_sigma({"forces_std_epistemic": same})
    assert watchdog["force_sigma_max_atom"] == pytest.approx(
        1000 * np.sqrt(3) * np.mean([s[:, 0].max() for s in epistemic]), rel=1e-12)
    assert watchdog_force_sigma({"forces_std": epistemic}) == {
        "force_sigma_max_atom": None, "force_sigma_max_atom_p95": None}


def _two_member_spread(rng, true_sigma, shrink):
    """Per-component spread of two members whose forces scatter by ``true_sigma / shrink``:
    |F₁ − F₂|/2 — often near zero for one component alone."""
    return np.abs(rng.normal(size=true_sigma.shape) * true_sigma / shrink) / np.sqrt(2)


def test_robust_fit_stays_near_the_truth_where_the_ml_scale_explodes():
    """Errors e ~ N(0, σ²) with σ varying by atom; the members' spread is σ/4 (a factor 4 too
    small, truth s = 4) for all atoms but a few whose spread is near zero. The old
    maximum-likelihood scale ⟨e²/σ²⟩^½ explodes; the robust fit stays near 4, agrees with a
    brute-force grid search for the scale with the smallest miscalibration area, and on an
    independent draw the calibrated σ are calibrated (small area, finite NLL below that of a
    constant σ)."""
    rng = np.random.default_rng(11)
    n = 2000
    true_sigma = np.exp(rng.normal(-3, 0.5, n))  # per atom, eV/Å
    errors = rng.normal(size=(n, 3)) * true_sigma[:, None]
    raw = true_sigma / 4
    raw[:10] = 1e-9  # a few atoms whose members happen to agree
    assert fit_sigma_scale(errors.ravel(), np.repeat(raw, 3)) > 1000  # the old fit
    calibration, report = fit_calibration(errors, raw, per_atom=True)
    assert report["observations"] == n and "warning" not in report
    assert calibration.exponent == pytest.approx(1.0, abs=0.15)
    sigma = calibration.apply(raw)
    assert np.sqrt(np.mean(sigma**2)) == pytest.approx(np.sqrt(np.mean(errors**2)), rel=0.05)
    # brute force: the constant scale with the smallest miscalibration area on these data
    grid = np.linspace(2.0, 8.0, 121)
    clipped = np.repeat(np.maximum(raw, np.quantile(raw, 0.05)), 3)
    best = grid[np.argmin([miscalibration_area(errors.ravel(), s * clipped) for s in grid])]
    effective = np.median(calibration.apply(raw[10:]) / raw[10:])
    assert effective == pytest.approx(4.0, rel=0.1)
    assert effective == pytest.approx(best, rel=0.1)
    # an independent draw: calibrated, and better than a constant σ of the validation RMSE
    new_sigma = np.exp(rng.normal(-3, 0.5, n))
    new_errors = rng.normal(size=(n, 3)) * new_sigma[:, None]
    calibrated = np.repeat(calibration.apply(new_sigma / 4), 3)
    assert miscalibration_area(new_errors.ravel(), calibrated) < 0.05
    nll = gaussian_nll(new_errors.ravel(), calibrated)
    assert np.isfinite(nll)
    assert nll < gaussian_nll(new_errors.ravel(), np.full(3 * n, np.sqrt(np.mean(errors**2))))


def test_per_atom_sigma_of_two_members_is_robust():
    """Two members' per-component spread is |N(0, σ²)|/√2: per component, ⟨e²/σ²⟩ has no
    finite mean and the old scale is far off; the RMS over an atom's components (3 degrees
    of freedom) fitted robustly gives σ' whose RMS matches the errors and a small area."""
    rng = np.random.default_rng(5)
    n = 3000
    true_sigma = np.exp(rng.normal(-3, 0.3, n))
    errors = rng.normal(size=(n, 3)) * true_sigma[:, None]
    spread = _two_member_spread(rng, np.repeat(true_sigma[:, None], 3, 1), 4.0)
    old = fit_sigma_scale(errors.ravel(), spread.ravel())
    per_atom = np.sqrt(np.mean(spread**2, axis=1))
    calibration, _ = fit_calibration(errors, per_atom, per_atom=True)
    sigma = np.repeat(calibration.apply(per_atom), 3)
    assert np.mean(sigma) / np.sqrt(np.mean(errors**2)) == pytest.approx(1.0, abs=0.25)
    assert np.mean(old * spread) / np.sqrt(np.mean(errors**2)) > 3  # the old: far too wide
    assert miscalibration_area(errors.ravel(), sigma) < 0.1


def test_exponent_makes_sigma_follow_the_error():
    """Where the error grows as the square of the spread (true b = 2), the fitted exponent is
    near 2, as a brute-force maximum-likelihood grid over (s, b) also finds."""
    rng = np.random.default_rng(2)
    n = 4000
    raw = np.exp(rng.normal(-3, 0.4, n))
    reference = np.median(raw)
    true_sigma = 0.05 * (raw / reference) ** 2
    errors = rng.normal(size=(n, 3)) * true_sigma[:, None]
    calibration, _ = fit_calibration(errors, raw, per_atom=True)
    assert calibration.exponent == pytest.approx(2.0, abs=0.2)
    scales, exponents = np.linspace(0.02, 0.1, 41), np.linspace(1.0, 3.0, 41)
    nll = [[gaussian_nll(errors, np.repeat((s * (raw / reference) ** b)[:, None], 3, 1))
            for b in exponents] for s in scales]
    best_b = exponents[np.unravel_index(np.argmin(nll), (41, 41))[1]]
    assert calibration.exponent == pytest.approx(best_b, abs=0.2)
    sigma = calibration.apply(raw)
    assert np.median(sigma / true_sigma) == pytest.approx(1.0, rel=0.15)


def test_too_little_validation_data_shrinks_toward_one_with_a_warning():
    rng = np.random.default_rng(4)
    raw = np.exp(rng.normal(-3, 0.3, 8))
    errors = rng.normal(size=8) * raw * 10
    with pytest.warns(UserWarning, match="only 8 validation observations"):
        calibration, report = fit_calibration(errors, raw, name="energy σ")
    fitted = report["scale_fitted"]
    assert fitted == pytest.approx(np.sqrt(np.mean(errors**2) / np.mean(
        np.maximum(raw, np.quantile(raw, 0.05))**2)), rel=1e-12)
    assert 1 < calibration.scale < fitted
    assert np.log(calibration.scale) == pytest.approx(np.log(fitted) * 8 / 13, rel=1e-9)
    assert calibration.exponent == 1.0 and "only 8" in report["warning"]


def test_identity_and_old_scale_calibrations():
    import torch

    sigma = np.array([0.0, 1e-3, 0.2])
    assert np.array_equal(SigmaCalibration().apply(sigma), sigma)
    assert np.array_equal(SigmaCalibration(scale=3.0).apply(sigma), 3.0 * sigma)
    calibration = SigmaCalibration(2.0, 1.5, 0.1, 0.01, True)
    expected = 2.0 * 0.1 * (np.maximum(sigma, 0.01) / 0.1) ** 1.5
    np.testing.assert_allclose(calibration.apply(sigma), expected, rtol=1e-12)
    np.testing.assert_allclose(calibration.apply(torch.tensor(sigma)).numpy(), expected,
                               rtol=1e-12)
    assert SigmaCalibration.from_json(calibration.to_json()) == calibration


def test_exponent_from_structures_is_not_diluted_by_noisy_atom_sigmas():
    """Errors of 10-atom structures grow as σ_s^1.5 of a structure-level spread σ_s, but each
    atom's spread is a noisy 3-component estimate (two members): fitted per atom, the slope
    is diluted below 1.5 (and would be clipped to 1); from the structures' RMS values it is
    recovered, as a least-squares fit of log RMSE on log RMS σ over all structures also gives."""
    rng = np.random.default_rng(8)
    n_structures, n_atoms = 300, 10
    structure_sigma = np.exp(rng.normal(-3, 0.5, n_structures))
    structures = np.repeat(np.arange(n_structures), n_atoms)
    true_sigma = 0.05 * (structure_sigma / 0.05) ** 1.5
    errors = rng.normal(size=(n_structures * n_atoms, 3)) * true_sigma[structures, None]
    spread = np.sqrt(np.mean(rng.normal(size=(len(structures), 3)) ** 2, axis=1))
    raw = structure_sigma[structures] * spread / 4
    per_atom, _ = fit_calibration(errors, raw, per_atom=True)
    by_structure, _ = fit_calibration(errors, raw, per_atom=True, structures=structures)
    rmse = np.sqrt([np.mean(errors[structures == k] ** 2) for k in range(n_structures)])
    rms_sigma = np.sqrt([np.mean(raw[structures == k] ** 2) for k in range(n_structures)])
    direct = np.polyfit(np.log(rms_sigma), np.log(rmse), 1)[0]
    assert direct == pytest.approx(1.5, abs=0.2)  # RMS over 30 components: a little noise
    assert by_structure.exponent == pytest.approx(direct, abs=0.15)
    assert per_atom.exponent < by_structure.exponent - 0.2


def test_pooling_keeps_each_structures_mean_variance_and_is_chosen_for_noisy_atoms():
    """pool(): σ_i² → w σ_i² + (1 − w) ⟨σ²⟩_structure (numpy and torch alike, brute force per
    structure); where atoms' σ are pure noise around their structure's σ, the fit pools them
    (w < 1) and the pooled σ have a lower NLL than the atoms' own."""
    import torch

    rng = np.random.default_rng(9)
    structures = np.repeat(np.arange(200), 12)
    sigma = np.exp(rng.normal(-3, 0.5, 200))[structures] * np.sqrt(
        rng.chisquare(3, len(structures)) / 3)
    pooled = SigmaCalibration(atom_weight=0.25).pool(sigma, structures)
    for k in (0, 7, 199):
        part = sigma[structures == k]
        np.testing.assert_allclose(pooled[structures == k],
                                   np.sqrt(0.25 * part**2 + 0.75 * np.mean(part**2)))
        assert np.mean(pooled[structures == k] ** 2) == pytest.approx(np.mean(part**2))
    np.testing.assert_allclose(SigmaCalibration(atom_weight=0.25).pool(
        torch.tensor(sigma), torch.tensor(structures)).numpy(), pooled, rtol=1e-12)
    truth = np.sqrt(np.bincount(structures, sigma**2) / 12)[structures]
    errors = rng.normal(size=(len(sigma), 3)) * 3 * truth[:, None]
    calibration, _ = fit_calibration(errors, sigma, per_atom=True, structures=structures)
    assert calibration.atom_weight < 0.5
    own, _ = fit_calibration(errors, sigma, per_atom=True)
    assert gaussian_nll(errors, np.repeat(calibration.apply(calibration.pool(
        sigma, structures))[:, None], 3, 1)) < gaussian_nll(
        errors, np.repeat(own.apply(sigma)[:, None], 3, 1))
