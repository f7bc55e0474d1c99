"""Dimensionless joint energy–force(–stress) loss from a Gaussian likelihood.

Derivation. Take the reference labels as the model's prediction plus independent Gaussian
noise: the per-atom energy error ΔE_b / N_b of structure b with standard deviation σ_E
(eV/atom), each of its 3N_b force components with σ_F (eV/Å), each of the 6 independent
stress components with σ_S (eV/Å³) and, for models with learned charges, each of the 3
dipole components with σ_μ (e·Å), each reference partial charge with σ_q (e) and, as priors,
the charge each single-fragment structure's neutralisation had to supply (its formal charges
should already carry its total, :mod:`mlpot.physics.charges`) with σ_ex (e) and each learned
charge of such a structure around D4's EEQ charge with σ_eeq (e, :mod:`mlpot.physics.d4`)
and, for learned dispersion, each atom's log volume ratio against D4's with σ_v
(:mod:`mlpot.physics.dispersion`). The negative log-likelihood of a batch is then, up to
constants,

    −log p = ½ Σ_b (ΔE_b / (N_b σ_E))² + ½ Σ_{b,i,α} (ΔF_{iα} / σ_F)² + ½ Σ_{b,αβ} (Δσ_{αβ} / σ_S)²

Every term is dimensionless. Dividing by the number of observations (one energy, 3N_b force
components and 6 stress components per structure that has them) gives the loss below: the
mean squared standardised residual per observation. So one energy weighs as much as one
force component, and a structure with 3N force components contributes 3N times as many
force terms as energy terms, exactly as the likelihood says. σ_E, σ_F and σ_S therefore set
the relative weights by the accuracy one expects of each label. Frames without forces
contribute their energy alone.

With an aleatoric variance head the σ² of each observation is predicted (v, per structure
energy and per atom force) and the full Gaussian NLL is kept, ln v included, made
dimensionless by the same reference σ: r²/v + ln(v/σ_ref²). β-NLL (Seitzer et al., ICLR 2022)
weights each term by stop-grad (v/σ_ref²)^β so that noisy observations do not starve the fit of
the mean (β = 0: plain NLL).
"""

from __future__ import annotations

import torch

from mlpot import keys

_UPPER = (torch.tensor([0, 1, 2, 1, 0, 0]), torch.tensor([0, 1, 2, 2, 2, 1]))  # xx yy zz yz xz xy


def _nll_terms(squared: torch.Tensor, variance: torch.Tensor, reference,
               beta: float) -> torch.Tensor:
    """Per-observation Gaussian NLL, dimensionless: r²/v + ln(v/σ_ref²) for squared residuals
    r² and predicted variances v (same units), weighted by stop-grad (v/σ_ref²)^β (β-NLL)."""
    ratio = variance / reference**2
    return (squared / variance + torch.log(ratio)) * ratio.detach() ** beta


class EnergyForceLoss:
    """Mean squared standardised residual per observation (see module docstring).

    Args:
        sigma_energy: expected energy error per atom, eV/atom.
        sigma_force: expected force error per component, eV/Å.
        sigma_stress: expected stress error per component, eV/Å³.
        sigma_dipole: expected dipole error per component, e·Å (models with learned charges,
            frames with a reference ``dipole``).
        sigma_charge: expected error per atomic charge, e (models with learned charges,
            frames with reference ``charges``).
        sigma_charge_excess: prior width of the charge the neutralisation supplies to each
            group, e (models with learned charges).
        sigma_charge_eeq: prior width of learned charges around D4's EEQ charges, e (atoms
            of structures that are one fragment at the cutoff).
        sigma_volume: prior width of log v − log v_D4 (learned dispersion volumes).
    """

    def __init__(self, sigma_energy: float = 0.001, sigma_force: float = 0.03,
                 sigma_stress: float = 0.001, sigma_dipole: float = 0.01,
                 sigma_charge: float = 0.02, sigma_charge_excess: float = 0.02,
                 sigma_volume: float = 0.1, sigma_charge_eeq: float = 0.1):
        self.sigma_energy = sigma_energy
        self.sigma_force = sigma_force
        self.sigma_stress = sigma_stress
        self.sigma_dipole = sigma_dipole
        self.sigma_charge = sigma_charge
        self.sigma_charge_excess = sigma_charge_excess
        self.sigma_volume = sigma_volume
        self.sigma_charge_eeq = sigma_charge_eeq

    def __call__(self, prediction: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 nll: bool = False, beta: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
        """``nll``: with predicted aleatoric variances, each energy and force term becomes the
        Gaussian NLL with that variance in place of σ² (see :func:`_nll_terms`)."""
        n_atoms = batch[keys.N_ATOMS].to(prediction[keys.ENERGY].dtype)
        nll = nll and keys.ENERGY_VAR_ALEATORIC in prediction
        residual = prediction[keys.ENERGY] - batch[keys.ENERGY]
        if nll:  # the structure's energy variance against (N σ_E,ref)²
            energy_sq = _nll_terms(residual**2, prediction[keys.ENERGY_VAR_ALEATORIC],
                                   n_atoms * self.sigma_energy, beta)
        else:
            energy_sq = ((residual / n_atoms) / self.sigma_energy) ** 2
        terms = {"energy": energy_sq}  # standardised squared residuals per observation
        if keys.FORCES in batch and keys.FORCES in prediction:
            atom_has_forces = batch[keys.HAS_FORCES][batch[keys.BATCH]]
            diff = (prediction[keys.FORCES] - batch[keys.FORCES])[atom_has_forces]
            if nll:
                variance = prediction[keys.FORCES_VAR_ALEATORIC][atom_has_forces][:, None]
                terms["forces"] = _nll_terms(diff**2, variance.expand_as(diff),
                                             self.sigma_force, beta)
            else:
                terms["forces"] = (diff / self.sigma_force) ** 2
        if keys.DIPOLE in batch and keys.DIPOLE in prediction:  # learned charges' dipoles
            has = batch[keys.HAS_DIPOLE]
            terms["dipole"] = ((prediction[keys.DIPOLE] - batch[keys.DIPOLE])[has]
                               / self.sigma_dipole) ** 2
        if keys.PARTIAL_CHARGES in batch and keys.CHARGES in prediction:
            has = batch[keys.HAS_PARTIAL_CHARGES][batch[keys.BATCH]]
            terms["charges"] = ((prediction[keys.CHARGES] - batch[keys.PARTIAL_CHARGES])[has]
                                / self.sigma_charge) ** 2
        if keys.CHARGE_EXCESS in prediction:
            terms["charge_excess"] = (prediction[keys.CHARGE_EXCESS]
                                      / self.sigma_charge_excess) ** 2
        if keys.CHARGE_EEQ_DEVIATION in prediction:
            terms["charges_eeq"] = (prediction[keys.CHARGE_EEQ_DEVIATION]
                                    / self.sigma_charge_eeq) ** 2
        if keys.VOLUME_DEVIATION in prediction:
            terms["volumes"] = (prediction[keys.VOLUME_DEVIATION] / self.sigma_volume) ** 2
        if keys.STRESS in batch and keys.STRESS in prediction:
            diff = (prediction[keys.STRESS] - batch[keys.STRESS])[:, _UPPER[0], _UPPER[1]]
            terms["stress"] = (diff / self.sigma_stress) ** 2
        total = sum(term.sum() for term in terms.values())
        count = sum(term.numel() for term in terms.values())
        parts = {name: float(term.detach().mean()) for name, term in terms.items()
                 if term.numel()}
        return total / count, parts
