"""Linear baseline on the same symmetry functions: E_i = w_{Z_i} · G_i (eV), fitted by ridge.

No per-element bias: an isolated atom (G = 0) has E_i = 0, so the potential gives E0.
The weights are fitted in closed form on energies and forces together by
:func:`mlpot.train.ridge.fit_linear`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlpot import keys
from mlpot.descriptors.symmetry import SymmetryFunctions
from mlpot.models.base import DescriptorModel


class LinearModel(DescriptorModel):
    """Per-element linear map of symmetry functions to per-atom energies (eV)."""

    kind = "linear"

    def __init__(self, descriptor: dict | SymmetryFunctions, ridge: float = 1e-6):
        super().__init__(descriptor)
        descriptor = self.descriptor
        self.ridge = float(ridge)
        n_el, n_feat = len(descriptor.elements), descriptor.n_features
        self.weights = nn.Parameter(torch.zeros(n_el, n_feat, dtype=torch.float64))

    def config(self) -> dict:
        return dict(descriptor=self.descriptor.config(), ridge=self.ridge)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.descriptor(batch)
        species = self.descriptor.species_index[batch[keys.NUMBERS]]
        weights = self.weights.to(features.dtype)[species]
        return {keys.ATOMIC_ENERGY: (features * weights).sum(-1)}
