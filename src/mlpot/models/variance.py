"""Aleatoric variance head: how noisy the reference labels are around each structure.

A small per-element network on radial symmetry functions (G2 only: no angular triplets, so it
sits beside any model, with the model's cutoff) predicts two non-negative numbers per atom,

    v^E_i = σ_E,ref² · exp(a_i),    v^F_i = σ_F,ref² · exp(b_i),

the atom's contribution to the variance of the total energy (eV²) and the variance of each
of its force components (eV²/Å²). A structure's energy variance is σ²_E = Σ_i v^E_i (variances
of independent per-atom noise add), an atom's force variance is isotropic: σ²_F,iα = v^F_i.
σ_E,ref (eV/atom) and σ_F,ref (eV/Å) are the loss's reference accuracies, so the network's
raw outputs are of order one and start at σ ≈ σ_ref. The network predicts the *log* variance
(Kendall & Gal 2017): noise 20× σ_ref is a raw output of 6, reached in a few epochs. The first
heads used softplus(a) instead (``link="softplus"``, what model files without a ``link`` mean),
which needs a raw output of 400 for that noise: on acac with 5 meV/atom of energy noise the
softplus head reached 2 meV/atom in a 2.5-minute run and recalibration had to make up the rest
(inflating the epistemic σ with it).

The head reads positions without gradient: variances do not enter forces. It is trained by the
Gaussian negative log-likelihood (mlpot.train.loss), never by the energy–force fit itself.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from mlpot import keys
from mlpot.models.element_head import ElementHead


class VarianceHead(ElementHead):
    """Per-atom aleatoric variances (eV², eV²/Å²) from G2 descriptors.

    Args:
        elements: atomic numbers covered.
        cutoff: Å (the model's cutoff; the head uses no pair beyond it).
        sigma_energy: reference energy accuracy σ_E,ref, eV/atom.
        sigma_force: reference force accuracy σ_F,ref, eV/Å.
        n_radial: G2 Gaussians per neighbour element.  hidden: width of the one hidden layer.
        link: "exp" (the network gives ln(v/σ_ref²)) or "softplus" (older model files).
    """

    MAX_LOG_RATIO = 30.0  # raw outputs clamped to ±this: σ within e^±15 of σ_ref

    def __init__(self, elements, cutoff: float, sigma_energy: float, sigma_force: float,
                 n_radial: int = 8, hidden: int = 16, link: str = "exp"):
        super().__init__(elements, cutoff, n_radial=n_radial, hidden=hidden, n_outputs=2)
        if link not in ("exp", "softplus"):
            raise ValueError(f"variance head link must be 'exp' or 'softplus', not {link!r}")
        self.sigma_energy, self.sigma_force = float(sigma_energy), float(sigma_force)
        self.link = link

    def config(self) -> dict:
        return dict(super().config(), sigma_energy=self.sigma_energy,
                    sigma_force=self.sigma_force, link=self.link)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(v^E, v^F), each (n_atoms,): eV² and eV²/Å²."""
        raw = self.raw_outputs({**batch, keys.POSITIONS: batch[keys.POSITIONS].detach()})
        scale = raw.new_tensor([self.sigma_energy**2, self.sigma_force**2])
        if self.link == "exp":
            variances = torch.exp(raw.clamp(-self.MAX_LOG_RATIO, self.MAX_LOG_RATIO)) * scale
        else:
            variances = functional.softplus(raw) * scale
        return variances[:, 0], variances[:, 1]
