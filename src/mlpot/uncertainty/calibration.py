"""How well predicted uncertainties match actual errors.

For errors e_k (prediction − reference) and predicted standard deviations σ_k:
- Gaussian negative log-likelihood per observation, NLL = ⟨½ ln(2π σ²) + e²/(2σ²)⟩ (in the
  units of e: eV for energies, eV/Å for forces; lower is better);
- Spearman rank correlation of σ with |e| (does a larger σ mean a larger error?), next to
  its reference value: the mean Spearman of σ with errors drawn from N(0, σ²) themselves
  (Pernot, J. Chem. Phys. 156, 114109 (2022)). A perfectly calibrated σ scores about that, not
  1: one error per σ is a single draw, so the attainable correlation depends on how much σ
  varies. Per structure, force errors and σ are RMS values over the structure's components;
- miscalibration area (Tran et al. 2020): for each confidence p ∈ (0, 1) the fraction of
  errors inside the central Gaussian interval ±σ Φ⁻¹((1 + p)/2) should be p; the area is the
  mean |observed − p| over p (0 = calibrated, 0.5 = worst).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.special import erf
from scipy.stats import spearmanr

from mlpot.data.records import Frame

SIGMA_FLOOR = 1e-12  # σ below this is treated as this (identical members give σ = 0)


def gaussian_nll(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood of ``errors`` under N(0, σ²)."""
    var = np.maximum(np.asarray(sigmas, dtype=float), SIGMA_FLOOR) ** 2
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + np.asarray(errors) ** 2 / (2 * var)))


def spearman(sigmas: np.ndarray, errors: np.ndarray) -> float | None:
    """Spearman rank correlation of σ with |error| (None with fewer than 3 values)."""
    if len(sigmas) < 3:
        return None
    value = spearmanr(np.asarray(sigmas), np.abs(np.asarray(errors))).statistic
    return None if np.isnan(value) else float(value)


def spearman_reference(sigmas: np.ndarray, components=1, draws: int = 200,
                       seed: int = 0) -> float | None:
    """Mean Spearman(σ, |e|) for errors drawn from the model's own N(0, σ²): the value a
    calibrated σ would score. |e| = σ·RMS(z) over ``components`` independent standard normals
    per entry (1: one value, |e| = σ|z|; 3N for a structure's force RMS; scalar or per entry)."""
    sigmas = np.asarray(sigmas, dtype=float)
    if len(sigmas) < 3:
        return None
    components = np.broadcast_to(np.asarray(components, dtype=float), sigmas.shape)
    rms_z = np.sqrt(np.random.default_rng(seed).chisquare(components, (draws, len(sigmas)))
                    / components)
    values = [spearman(sigmas, sigmas * row) for row in rms_z]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def structure_force_errors(frames: list[Frame], predicted: dict) -> tuple | None:
    """Per structure with forces: (RMS force error, RMS force σ, number of components 3N),
    eV/Å, from per-frame arrays in ``predicted`` (None without forces or σ)."""
    with_forces = _with_forces(frames)
    if not with_forces or not predicted.get("forces_std"):
        return None
    rms = lambda values: float(np.sqrt(np.mean(np.asarray(values) ** 2)))  # noqa: E731
    return (np.array([rms(predicted["forces"][k] - frames[k].forces) for k in with_forces]),
            np.array([rms(predicted["forces_std"][k]) for k in with_forces]),
            np.array([3 * len(frames[k]) for k in with_forces]))


def calibration_curve(errors: np.ndarray, sigmas: np.ndarray, n_levels: int = 99):
    """(expected p, observed fraction of |e| ≤ σ z_p), p on an even grid in (0, 1)."""
    expected = np.linspace(0, 1, n_levels + 2)[1:-1]
    scaled = np.abs(np.asarray(errors)) / np.maximum(np.asarray(sigmas), SIGMA_FLOOR)
    # |e|/σ ≤ z_p  ⇔  erf(|e|/(σ√2)) ≤ p: compare the Gaussian confidence of each error
    confidence = erf(scaled / np.sqrt(2))
    observed = np.array([np.mean(confidence <= p) for p in expected])
    return expected, observed


def miscalibration_area(errors: np.ndarray, sigmas: np.ndarray) -> float:
    expected, observed = calibration_curve(errors, sigmas)
    return float(np.mean(np.abs(observed - expected)))


def fit_sigma_scale(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """The factor s that maximises the Gaussian likelihood of ``errors`` under N(0, (sσ)²):
    s² = ⟨e²/σ²⟩ (recalibration, fitted on validation data)."""
    ratio = np.asarray(errors) / np.maximum(np.asarray(sigmas), SIGMA_FLOOR)
    return float(np.sqrt(np.mean(ratio**2)))


MIN_OBSERVATIONS = 20  # fewer independent observations: the fitted scale is shrunk, with a warning
PRIOR_OBSERVATIONS = 5  # shrinkage: log s × n/(n + this) (a prior worth 5 observations at s = 1)
MIN_FOR_EXPONENT = 20  # structures (or observations) needed to fit the exponent b (else 1)
FLOOR_QUANTILE = 0.05  # σ floor: this quantile of the validation σ


@dataclass
class SigmaCalibration:
    """A map from the raw spread σ to a calibrated σ, fitted on validation data:

        σ' = s · σ_ref · (max(σ, σ_min) / σ_ref)^b

    s (scale), b (exponent; b > 1: σ' rises faster than σ), σ_ref (reference, the median
    validation σ; it only matters where b ≠ 1) and σ_min (floor) are in the units of σ
    (eV, eV/Å). ``per_atom`` (forces): the three components of an atom share one σ, the RMS of
    their spreads — a rotation-invariant quantity, never near zero for one component alone —
    and before the map each atom's σ² is pooled with its structure's mean σ²,
    σ_i² ← w σ_i² + (1 − w) ⟨σ²⟩_structure (w: ``atom_weight``; a few members' spread of one
    atom is a noisy estimate, the structure's mean much less so, and it is unchanged).
    The defaults are the identity; ``SigmaCalibration(scale=s)`` is the old constant scale.
    """

    scale: float = 1.0
    exponent: float = 1.0
    reference: float = 1.0
    floor: float = 0.0
    per_atom: bool = False
    atom_weight: float = 1.0

    def pool(self, sigma, structure):
        """σ per atom (N,) pooled with its structure's RMS σ (``structure`` (N,): the
        structure index of each atom); numpy arrays or torch tensors."""
        if self.atom_weight >= 1.0 or len(sigma) == 0:
            return sigma
        var = sigma**2
        if hasattr(var, "index_add"):
            n = int(structure.max()) + 1
            sums = var.new_zeros(n).index_add(0, structure, var)
            counts = var.new_zeros(n).index_add(0, structure, var.new_ones(var.shape))
        else:
            sums, counts = np.bincount(structure, var), np.bincount(structure)
        mean = (sums / counts)[structure]
        return (self.atom_weight * var + (1.0 - self.atom_weight) * mean) ** 0.5

    def apply(self, sigma):
        """Calibrated σ of raw ``sigma`` (numpy array or torch tensor, any shape)."""
        if hasattr(sigma, "clamp_min"):
            clipped = sigma.clamp_min(self.floor) if self.floor > 0 else sigma
        else:
            clipped = np.maximum(sigma, self.floor)
        if self.exponent != 1.0:
            clipped = self.reference * (clipped / self.reference) ** self.exponent
        return self.scale * clipped

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, file=None, field: str = "sigma_calibration"
                  ) -> SigmaCalibration:
        """The calibration stored by :meth:`to_json`; with ``file``, every field is checked
        (finite numbers, scale and reference > 0, floor ≥ 0, atom weight in [0, 1]) and a
        ModelFileError names the file and field."""
        if file is None:
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        from mlpot.errors import ModelFileError
        from mlpot.serialize import finite_number

        if not isinstance(data, dict):
            raise ModelFileError(f"{file}: field '{field}' must be an object, not {data!r}")
        values = {}
        for name, low, positive in (("scale", 0.0, True), ("exponent", 0.0, True),
                                    ("reference", 0.0, True), ("floor", 0.0, False),
                                    ("atom_weight", 0.0, False)):
            if name in data:
                values[name] = finite_number(file, f"{field}.{name}", data[name], minimum=low)
                if positive and values[name] == 0:
                    raise ModelFileError(f"{file}: field '{field}.{name}' must be > 0")
        if values.get("atom_weight", 1.0) > 1:
            raise ModelFileError(f"{file}: field '{field}.atom_weight' must be ≤ 1")
        per_atom = data.get("per_atom", False)
        if not isinstance(per_atom, bool):
            raise ModelFileError(f"{file}: field '{field}.per_atom' must be true or false")
        return cls(per_atom=per_atom, **values)


def stored_calibrations(file, description: dict) -> dict[str, SigmaCalibration]:
    """The checked ``sigma_calibration`` entries ({"energy"?, "forces"?}) of an ensemble or
    last-layer description read from ``file`` ({} for folders saved before them)."""
    from mlpot.errors import ModelFileError

    stored = description.get("sigma_calibration", {})
    if not isinstance(stored, dict) or not set(stored) <= {"energy", "forces"}:
        raise ModelFileError(f"{file}: field 'sigma_calibration' must be an object with "
                             f"'energy' and/or 'forces', not {stored!r}"[:300])
    return {name: SigmaCalibration.from_json(value, file, f"sigma_calibration.{name}")
            for name, value in stored.items()}


def fit_calibration(errors: np.ndarray, sigmas: np.ndarray, per_atom: bool = False,
                    name: str = "σ", structures: np.ndarray | None = None
                    ) -> tuple[SigmaCalibration, dict]:
    """Fit σ' = s σ_ref (max(σ, σ_min)/σ_ref)^b to validation errors; returns it and a report.
    Per atom with ``structures``, also the weight w of an atom's own σ² against its
    structure's mean (:meth:`SigmaCalibration.pool`): the w of 0, 0.1, …, 1 whose fitted map
    gives the smallest validation NLL (pooling removes the near-zero σ of single atoms).
    """
    if not (per_atom and structures is not None):
        return _fit_map(errors, sigmas, per_atom, name, structures)
    errors = np.asarray(errors, dtype=float).reshape(len(sigmas), -1)
    sigmas, structures = np.asarray(sigmas, dtype=float), np.asarray(structures)
    _, structures = np.unique(structures, return_inverse=True)
    trials = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for weight in np.linspace(0.0, 1.0, 11):
            pooled = SigmaCalibration(atom_weight=weight).pool(sigmas, structures)
            calibration, report = _fit_map(errors, pooled, per_atom, name, structures)
            calibration.atom_weight = float(weight)
            sigma = np.broadcast_to(calibration.apply(pooled)[:, None], errors.shape)
            trials.append((gaussian_nll(errors, sigma), -weight, calibration, report))
    _, _, calibration, report = min(trials, key=lambda t: t[:2])
    if "warning" in report:
        warnings.warn(report["warning"], stacklevel=2)
    return calibration, report


def _fit_map(errors: np.ndarray, sigmas: np.ndarray, per_atom: bool, name: str,
             structures: np.ndarray | None) -> tuple[SigmaCalibration, dict]:
    """Fit σ' = s σ_ref (max(σ, σ_min)/σ_ref)^b to validation errors; returns it and a report.

    ``errors`` (n, k): the k error components of n independent observations that share one
    raw σ (``sigmas``, (n,)): per atom the 3 force components (eV/Å), per structure the
    energy (k = 1, eV); ``structures`` (n,), optional: the structure of each observation.
    Robust where the maximum-likelihood scale s² = ⟨e²/σ²⟩ is not: a few σ near zero (two
    members that happen to agree) dominate that mean. Here
    - σ_min is the 5 % quantile of σ: no σ is trusted to be smaller than the typical σ allows;
    - b is the slope of log RMSE against log RMS σ over up to ten quantile bins (the
      calibration curve itself, ENCE-style; Levi et al. 2022) of the structures' RMS values
      where ``structures`` is given (an atom's σ from a few members is too noisy: its slope is
      diluted toward 0), fitted with at least 20 of them (else 1) and bounded to [1, 3]: a
      slope below 1 in validation data reflects that noise, and would damp σ exactly where
      the error rises out of distribution;
    - s makes the mean calibrated variance equal the mean squared error, ⟨e²⟩ = ⟨σ'²⟩
      (a ratio of means: no single e²/σ² term can dominate);
    - log s is shrunk toward 0 by n/(n + 5) (a prior worth 5 observations at s = 1), and with
      fewer than 20 observations a warning says so.
    """
    errors = np.asarray(errors, dtype=float).reshape(len(sigmas), -1)
    sigmas = np.asarray(sigmas, dtype=float)
    keep = np.isfinite(sigmas) & np.all(np.isfinite(errors), axis=1)
    errors, sigmas = errors[keep], sigmas[keep]
    n = len(sigmas)
    report = {"observations": n, "components": int(errors.size)}
    if n == 0 or not np.any(sigmas > 0):
        return SigmaCalibration(per_atom=per_atom), {**report, "warning": f"{name}: no "
                                                     "validation σ to fit; σ left as it is"}
    floor = float(np.quantile(sigmas, FLOOR_QUANTILE))
    clipped = np.maximum(sigmas, floor)
    reference = float(np.median(clipped))
    exponent = 1.0
    slope_errors, slope_sigmas = errors, clipped
    if structures is not None:
        slope_errors, slope_sigmas = _structure_rms(errors, clipped, np.asarray(structures)[keep])
    if len(slope_sigmas) >= MIN_FOR_EXPONENT:
        exponent = float(np.clip(_binned_slope(slope_errors, slope_sigmas,
                                               min(10, len(slope_sigmas) // 4)), 1.0, 3.0))
        report["exponent_fitted_on"] = len(slope_sigmas)
    shaped = reference * (clipped / reference) ** exponent
    squared = np.mean(errors**2, axis=1)
    fitted = float(np.sqrt(np.mean(squared) / np.mean(shaped**2)))
    weight = n / (n + PRIOR_OBSERVATIONS)
    scale = float(np.exp(weight * np.log(fitted))) if fitted > 0 else 1.0
    report.update(scale_fitted=fitted, shrinkage=weight)
    if n < MIN_OBSERVATIONS:
        report["warning"] = (f"{name}: only {n} validation observations; σ scale {fitted:.3g} "
                             f"shrunk toward 1 → {scale:.3g} (give more validation data)")
        warnings.warn(report["warning"], stacklevel=2)
    calibration = SigmaCalibration(scale, exponent, reference, floor, per_atom)
    return calibration, report


def _structure_rms(errors: np.ndarray, sigmas: np.ndarray, structures: np.ndarray) -> tuple:
    """Per structure: RMS of its error components (n_s, 1) and RMS of its σ (n_s,)."""
    _, index = np.unique(structures, return_inverse=True)
    count = np.bincount(index)
    squared = np.bincount(index, np.sum(errors**2, axis=1)) / (count * errors.shape[1])
    return np.sqrt(squared)[:, None], np.sqrt(np.bincount(index, sigmas**2) / count)


def _binned_slope(errors: np.ndarray, sigmas: np.ndarray, n_bins: int = 10) -> float:
    """Least-squares slope of log RMSE over log RMS σ in ``n_bins`` quantile bins of σ."""
    order = np.argsort(sigmas)
    bins = np.array_split(order, n_bins)
    log_sigma = np.log([np.sqrt(np.mean(sigmas[b] ** 2)) for b in bins])
    log_rmse = np.log([np.sqrt(np.mean(errors[b] ** 2)) + 1e-300 for b in bins])
    if np.ptp(log_sigma) == 0:
        return 1.0
    return float(np.polyfit(log_sigma, log_rmse, 1)[0])


def _with_forces(frames: list[Frame]) -> list[int]:
    """Indices of the frames that carry reference forces."""
    return [k for k, f in enumerate(frames) if f.forces is not None]


def ensemble_errors(frames: list[Frame], predicted: dict) -> dict[str, tuple]:
    """(errors, σ) of energies per atom (eV/atom) and of force components (eV/Å)."""
    n = np.array([len(f) for f in frames])
    result = {"energy": ((np.asarray(predicted["energy"]) - [f.energy for f in frames]) / n,
                         np.asarray(predicted["energy_std"]) / n)}
    with_forces = _with_forces(frames)
    if with_forces and predicted.get("forces_std"):
        result["forces"] = (
            np.concatenate([predicted["forces"][k] - frames[k].forces for k in with_forces]),
            np.concatenate([predicted["forces_std"][k] for k in with_forces]))
    return result


def _mean_sigma(frames: list[Frame], predicted: dict, key: str, per_atom: bool) -> float | None:
    """Mean σ in meV/atom (energies, per atom of each structure) or meV/Å (force components)."""
    if key not in predicted:
        return None
    if per_atom:
        with_forces = _with_forces(frames)
        if not with_forces:
            return None
        return float(np.mean(np.concatenate([predicted[key][k] for k in with_forces])) * 1000)
    return float(np.mean(np.asarray(predicted[key]) / [len(f) for f in frames]) * 1000)


WATCHDOG_QUANTILE = 0.95  # the high quantile over structures reported next to the mean


def largest_atom_force_sigma(sigma: np.ndarray) -> tuple[int, float]:
    """(atom, σ) of the atom with the largest force σ vector norm |σ_i| over x, y, z, for one
    structure's (N, 3) σ (eV/Å): what ``mlpot md --max-force-sigma`` compares, on the
    epistemic σ. For a per-atom calibration (the three components share σ_i) |σ_i| = √3 σ_i."""
    norms = np.linalg.norm(np.asarray(sigma, dtype=float), axis=1)
    atom = int(np.argmax(norms))
    return atom, float(norms[atom])


def watchdog_force_sigma(predicted: dict) -> dict:
    """The quantity ``mlpot md --max-force-sigma`` thresholds, over a data set: each
    structure's largest atomic epistemic force σ norm (:func:`largest_atom_force_sigma`);
    its mean over the structures ("force_sigma_max_atom") and 95 % quantile
    ("force_sigma_max_atom_p95"), meV/Å (None without an epistemic force σ). It is about
    √3 × the per-component σ and higher still for the largest of many atoms: a threshold
    should be picked relative to this, not to the mean per-component σ."""
    sigmas = [s for s in predicted.get("forces_std_epistemic") or [] if len(s)]
    if not sigmas:
        return {"force_sigma_max_atom": None, "force_sigma_max_atom_p95": None}
    largest = np.array([largest_atom_force_sigma(s)[1] for s in sigmas]) * 1000
    return {"force_sigma_max_atom": float(np.mean(largest)),
            "force_sigma_max_atom_p95": float(np.quantile(largest, WATCHDOG_QUANTILE))}


def uncertainty_metrics(frames: list[Frame], predicted: dict) -> dict:
    """σ means (epistemic and aleatoric apart), Spearman, NLL and miscalibration area.

    ``predicted`` (from mlpot.train.metrics.predict) holds "energy", "energy_std" (the total
    σ, eV, per structure) and, with forces, "forces", "forces_std" (eV/Å, per frame arrays),
    plus the "…_epistemic" / "…_aleatoric" parts where predicted. Energies are compared per
    atom (as the error metrics); per-atom force σ and error are the norms over x, y, z, per
    structure the RMS over its components. NLL, Spearman and the miscalibration area use the
    total σ; each Spearman per structure comes with its calibrated reference value.
    "force_sigma_max_atom" (and "…_p95"): what ``mlpot md --max-force-sigma`` thresholds
    (:func:`watchdog_force_sigma`), over all structures, references or not.
    Units: σ means in meV/atom and meV/Å; NLL in eV/atom (energies) and eV/Å (forces).
    """
    errors = ensemble_errors(frames, predicted)
    energy_error, energy_sigma = errors["energy"]
    result = {"energy_sigma_epistemic": _mean_sigma(frames, predicted, "energy_std_epistemic",
                                                    False),
              "energy_sigma_aleatoric": _mean_sigma(frames, predicted, "energy_std_aleatoric",
                                                    False),
              "spearman_energy": spearman(energy_sigma, energy_error),
              "spearman_energy_reference": spearman_reference(energy_sigma),
              "nll_energy": gaussian_nll(energy_error, energy_sigma),
              "miscalibration_area_energy": miscalibration_area(energy_error, energy_sigma),
              "force_sigma_epistemic": None, "force_sigma_aleatoric": None,
              "spearman_force": None, "spearman_force_structure": None,
              "spearman_force_structure_reference": None,
              "nll": None, "miscalibration_area_force": None,
              **watchdog_force_sigma(predicted)}
    if "forces" in errors:
        error, sigma = errors["forces"]
        result.update(
            force_sigma_epistemic=_mean_sigma(frames, predicted, "forces_std_epistemic", True),
            force_sigma_aleatoric=_mean_sigma(frames, predicted, "forces_std_aleatoric", True),
            spearman_force=spearman(np.linalg.norm(sigma, axis=1), np.linalg.norm(error, axis=1)),
            nll=gaussian_nll(error.ravel(), sigma.ravel()),
            miscalibration_area_force=miscalibration_area(error.ravel(), sigma.ravel()))
        per_structure, sigma_structure, components = structure_force_errors(frames, predicted)
        result.update(
            spearman_force_structure=spearman(sigma_structure, per_structure),
            spearman_force_structure_reference=spearman_reference(sigma_structure, components))
    return result
