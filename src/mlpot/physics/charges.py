"""Environment-dependent atomic charges that always sum to the structure's total charge.

A small per-element network on radial symmetry functions (the model's cutoff) predicts for
every atom a raw charge q̃_i and a positive weight w_i = softplus(s_i). The charges are then
shifted to the total charge Q of their structure, each in proportion to its weight
(PhysNet-style neutralisation with learned weights):

    q_i = q̃_i + w_i (Q − Σ_j q̃_j) / Σ_j w_j          (e; sums over the atoms of the structure)

so Σ_i q_i = Q exactly for any input (float rounding aside). The network is trained through
the Coulomb energy it produces (from energies and forces alone), and by reference dipoles
where the data has them.
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn
from torch.nn import functional

from mlpot import keys
from mlpot.descriptors.symmetry import SymmetryFunctions, default_radial


class ChargeHead(nn.Module):
    """Per-atom charges (e) conserving each structure's total charge (batch ``charge``)."""

    def __init__(self, elements, cutoff: float, n_radial: int = 8, hidden: int = 16):
        super().__init__()
        self.descriptor = SymmetryFunctions(elements, cutoff=cutoff,
                                            radial=default_radial(cutoff, n_radial),
                                            angular=([], [], []))
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
                    n_radial=self.n_radial, hidden=self.hidden)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Charges (n_atoms,), e."""
        features = self.descriptor(batch)
        species = self.descriptor.species_index[batch[keys.NUMBERS]]
        dtype = features.dtype
        x = (features - self.feature_mean.to(dtype)[species]) / self.feature_std.to(dtype)[species]
        raw = features.new_zeros(len(species), 2)
        for e, z in enumerate(self.descriptor.elements):
            atoms = torch.nonzero(species == e).squeeze(1)
            if len(atoms):
                raw = raw.index_put((atoms,), self.networks[chemical_symbols[z]](x[atoms]))
        return conserve_charge(raw[:, 0], functional.softplus(raw[:, 1]) + 1e-3, batch)


def conserve_charge(raw: torch.Tensor, weights: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """q_i = q̃_i + w_i (Q − Σq̃)/Σw per structure (Q = batch ``charge``, 0 if absent)."""
    index = batch[keys.BATCH]
    n_structures = len(batch[keys.N_ATOMS])
    total = batch.get(keys.CHARGE)
    total = raw.new_zeros(n_structures) if total is None else total.to(raw.dtype)
    excess = total - raw.new_zeros(n_structures).index_add(0, index, raw)
    weight_sum = raw.new_zeros(n_structures).index_add(0, index, weights)
    return raw + weights * (excess / weight_sum)[index]
