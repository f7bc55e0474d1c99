"""Behler–Parrinello network: one MLP per element on standardised symmetry functions.

E_i = b_{Z_i} n_i + s · [NN_{Z_i}(x_i) − NN_{Z_i}(x⁰_{Z_i})],  x = (G − μ_Z) / σ_Z,

where x⁰ is the standardised descriptor of an atom with no neighbours and n_i is the smooth
coordination number c_i = Σ_j f_c(r_ij) (baseline "linear", the default) or 1 − exp(−c_i)
("saturating"); both are 0 for a free atom (see :func:`mlpot.descriptors.cutoff.baseline_coordination`). An isolated atom (G = 0, c = 0) therefore
has E_i = 0 exactly, so the potential returns its reference energy E0. The per-element
coordination energies b_Z (eV) are fitted to the training energies by least squares and stay
trainable: they carry the large binding energy relative to free atoms (eV per atom), so the
networks learn only what is left. (A full linear term w·G does the same job but extrapolates
wildly on environments outside the training set.)
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn

from mlpot import keys
from mlpot.descriptors.symmetry import SymmetryFunctions
from mlpot.models.base import DescriptorModel
from mlpot.descriptors.cutoff import baseline_coordination, coordination_number

ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "celu": nn.CELU, "softplus": nn.Softplus,
               "gelu": nn.GELU}


def mlp(n_in: int, hidden: list[int], activation: str) -> nn.Sequential:
    """Fully connected network n_in → hidden… → 1 with a smooth activation."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} (smooth), "
                         f"not {activation!r}")
    layers, width = [], n_in
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class BehlerParrinello(DescriptorModel):
    """Per-element MLPs on symmetry functions; returns per-atom energies (eV)."""

    kind = "bpnn"

    def __init__(self, descriptor: dict | SymmetryFunctions, hidden=(64, 64),
                 activation: str = "silu", baseline: str = "linear"):
        super().__init__(descriptor)
        descriptor = self.descriptor
        self.hidden = [int(h) for h in hidden]
        self.activation = activation
        self.baseline = baseline
        baseline_coordination(torch.zeros(1), baseline)  # validates the name
        n_el, n_feat = len(descriptor.elements), descriptor.n_features
        self.networks = nn.ModuleDict({chemical_symbols[z]: mlp(n_feat, self.hidden, activation)
                                       for z in descriptor.elements})
        self.register_buffer("feature_mean", torch.zeros(n_el, n_feat, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(n_el, n_feat, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.tensor(1.0, dtype=torch.float64))
        self.coordination_energy = nn.Parameter(torch.zeros(n_el, dtype=torch.float64))

    def config(self) -> dict:
        return dict(descriptor=self.descriptor.config(), hidden=self.hidden,
                    activation=self.activation, baseline=self.baseline)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, energy_scale: float,
                       coordination_energy: torch.Tensor | None = None) -> None:
        """Descriptor mean/std per element (n_elements, n_features), the networks' output
        scale s (eV) and, if given, the coordination energies b_Z (n_elements,) eV."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.energy_scale.fill_(float(energy_scale))
        if coordination_energy is not None:
            self.coordination_energy.copy_(coordination_energy)

    def coordination(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Baseline input n_i of every atom (n_atoms,): c_i = Σ_j f_c(r_ij) or 1 − exp(−c_i)."""
        c = coordination_number(batch, self.descriptor.cutoff, self.descriptor.cutoff_function)
        return baseline_coordination(c, self.baseline)

    def atomic_energies(self, features: torch.Tensor, coordination: torch.Tensor,
                        species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n_atoms,) eV from descriptors (n_atoms, D), coordination
        numbers (n_atoms,) and element indices (n_atoms,)."""
        dtype = features.dtype
        mean, std = self.feature_mean.to(dtype), self.feature_std.to(dtype)
        energy = features.new_zeros(features.shape[0])
        baseline = self.coordination_energy.to(dtype)[species] * coordination
        for e, z in enumerate(self.descriptor.elements):
            atoms = torch.nonzero(species == e).squeeze(1)  # may be empty: no branch on it
            x = (features[atoms] - mean[e]) / std[e]
            x0 = (-mean[e] / std[e]).unsqueeze(0)
            out = self.networks[chemical_symbols[z]](torch.cat([x, x0])).squeeze(1)
            energy = energy.index_put((atoms,), out[:-1] - out[-1])
        return baseline + energy * self.energy_scale.to(dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = self.descriptor.species_index[batch[keys.NUMBERS]]
        energy = self.atomic_energies(self.descriptor(batch), self.coordination(batch), species)
        return {keys.ATOMIC_ENERGY: energy}
