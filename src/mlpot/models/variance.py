"""Aleatoric variance head: how noisy the reference labels are around each structure.

A small per-element network on radial symmetry functions (G2 only: no angular triplets, so it
sits beside any model, with the model's cutoff) predicts two non-negative numbers per atom,

    v^E_i = σ_E,ref² · softplus(a_i),    v^F_i = σ_F,ref² · softplus(b_i),

the atom's contribution to the variance of the total energy (eV²) and the variance of each
of its force components (eV²/Å²). A structure's energy variance is σ²_E = Σ_i v^E_i (variances
of independent per-atom noise add), an atom's force variance is isotropic: σ²_F,iα = v^F_i.
σ_E,ref (eV/atom) and σ_F,ref (eV/Å) are the loss's reference accuracies, so the network's
raw outputs are of order one; softplus(0) = ln 2 makes the initial σ ≈ 0.83 σ_ref.

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
    """

    def __init__(self, elements, cutoff: float, sigma_energy: float, sigma_force: float,
                 n_radial: int = 8, hidden: int = 16):
        super().__init__(elements, cutoff, n_radial=n_radial, hidden=hidden, n_outputs=2)
        self.sigma_energy, self.sigma_force = float(sigma_energy), float(sigma_force)

    def config(self) -> dict:
        return dict(super().config(), sigma_energy=self.sigma_energy,
                    sigma_force=self.sigma_force)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(v^E, v^F), each (n_atoms,): eV² and eV²/Å²."""
        raw = self.raw_outputs({**batch, keys.POSITIONS: batch[keys.POSITIONS].detach()})
        scale = raw.new_tensor([self.sigma_energy**2, self.sigma_force**2])
        variances = functional.softplus(raw) * scale
        return variances[:, 0], variances[:, 1]
