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
from ase.data import chemical_symbols
from torch import nn
from torch.nn import functional

from mlpot import keys
from mlpot.descriptors.symmetry import SymmetryFunctions, default_radial


class VarianceHead(nn.Module):
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
        super().__init__()
        self.descriptor = SymmetryFunctions(elements, cutoff=cutoff,
                                            radial=default_radial(cutoff, n_radial),
                                            angular=([], [], []))
        self.sigma_energy, self.sigma_force = float(sigma_energy), float(sigma_force)
        self.n_radial, self.hidden = int(n_radial), int(hidden)
        n_el, n_feat = len(self.descriptor.elements), self.descriptor.n_features
        self.networks = nn.ModuleDict({
            chemical_symbols[z]: nn.Sequential(nn.Linear(n_feat, self.hidden), nn.SiLU(),
                                               nn.Linear(self.hidden, 2))
            for z in self.descriptor.elements})
        self.register_buffer("feature_mean", torch.zeros(n_el, n_feat, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(n_el, n_feat, dtype=torch.float64))

    def config(self) -> dict:
        return dict(elements=self.descriptor.elements, cutoff=self.descriptor.cutoff,
                    sigma_energy=self.sigma_energy, sigma_force=self.sigma_force,
                    n_radial=self.n_radial, hidden=self.hidden)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-element descriptor mean and std (n_elements, n_features)."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(v^E, v^F), each (n_atoms,): eV² and eV²/Å²."""
        batch = {**batch, keys.POSITIONS: batch[keys.POSITIONS].detach()}
        features = self.descriptor(batch)
        species = self.descriptor.species_index[batch[keys.NUMBERS]]
        dtype = features.dtype
        x = (features - self.feature_mean.to(dtype)[species]) / self.feature_std.to(dtype)[species]
        raw = features.new_zeros(len(species), 2)
        for e, z in enumerate(self.descriptor.elements):
            mask = species == e
            if mask.any():
                raw[mask] = self.networks[chemical_symbols[z]](x[mask])
        scale = raw.new_tensor([self.sigma_energy**2, self.sigma_force**2])
        variances = functional.softplus(raw) * scale
        return variances[:, 0], variances[:, 1]
