"""Small per-element networks on radial symmetry functions: the base of the side heads.

The aleatoric variance head (:mod:`mlpot.models.variance`), the charge head
(:mod:`mlpot.physics.charges`) and the volume head (:mod:`mlpot.physics.dispersion`) each need
a couple of numbers per atom from its environment, beside whatever model predicts the energy:
G2 functions only (no angular triplets, the model's cutoff; standardised per element) or,
for quantities that must transfer to molecules not trained on, two covalent coordination
numbers (:mod:`mlpot.descriptors.coordination`; used as they are); one hidden layer per element.
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn

from mlpot import keys
from mlpot.descriptors.coordination import CovalentCoordination
from mlpot.descriptors.symmetry import SymmetryFunctions, default_radial

FEATURES = ("g2", "coordination")


class ElementHead(nn.Module):
    """``n_outputs`` raw numbers per atom from a per-element network on G2 functions.

    Args:
        elements: atomic numbers covered.  cutoff: Å.
        n_radial: G2 Gaussians per neighbour element.  hidden: width of the hidden layer.
        features: "g2" (radial symmetry functions) or "coordination" (covalent CN and its
            electronegativity-weighted twin).
    """

    def __init__(self, elements, cutoff: float, n_radial: int = 8, hidden: int = 16,
                 n_outputs: int = 2, features: str = "g2"):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
        self.features = features
        self.descriptor = (CovalentCoordination(elements, cutoff) if features == "coordination"
                           else SymmetryFunctions(elements, cutoff=cutoff,
                                                  radial=default_radial(cutoff, n_radial),
                                                  angular=([], [], [])))
        self.n_radial, self.hidden = int(n_radial), int(hidden)
        n_el, n_feat = len(self.descriptor.elements), self.descriptor.n_features
        self.networks = self.element_networks(n_outputs)
        self.register_buffer("feature_mean", torch.zeros(n_el, n_feat, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(n_el, n_feat, dtype=torch.float64))

    def element_networks(self, n_outputs: int) -> nn.ModuleDict:
        """One network per element, features → ``hidden`` (SiLU) → ``n_outputs``."""
        return nn.ModuleDict({
            chemical_symbols[z]: nn.Sequential(
                nn.Linear(self.descriptor.n_features, self.hidden), nn.SiLU(),
                nn.Linear(self.hidden, n_outputs))
            for z in self.descriptor.elements})

    def config(self) -> dict:
        return dict(elements=self.descriptor.elements, cutoff=self.descriptor.cutoff,
                    n_radial=self.n_radial, hidden=self.hidden)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-element descriptor mean and std (n_elements, n_features); coordination
        numbers are used as they are (already O(1); their spread in training data can be
        tiny, and dividing by it would make every other value an extrapolation)."""
        if self.features == "coordination":
            return
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def raw_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The networks' outputs, (n_atoms, n_outputs); differentiable in positions."""
        return self.apply_networks(self.networks, *self.standardised_features(batch))

    def standardised_features(self, batch: dict[str, torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features standardised per element (n_atoms, n_features), element index)."""
        features = self.descriptor(batch)
        species = self.descriptor.species_index[batch[keys.NUMBERS]]
        dtype = features.dtype
        x = (features - self.feature_mean.to(dtype)[species]) / self.feature_std.to(dtype)[species]
        return x, species

    def apply_networks(self, networks: nn.ModuleDict, x: torch.Tensor,
                       species: torch.Tensor) -> torch.Tensor:
        """Each atom's features through its element's network of ``networks``."""
        n_outputs = next(iter(networks.values()))[-1].out_features
        out = x.new_zeros(len(species), n_outputs)
        for e, z in enumerate(self.descriptor.elements):
            atoms = torch.nonzero(species == e).squeeze(1)
            if len(atoms):
                out = out.index_put((atoms,), networks[chemical_symbols[z]](x[atoms]))
        return out
