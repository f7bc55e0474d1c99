"""SchNet: an invariant message-passing network of continuous-filter convolutions.

After Schütt et al., J. Chem. Phys. 148, 241722 (2018), eqs. (2)–(7), with a smooth cutoff on
every filter. N atoms, E edges (i, j) of the neighbour list (both directions), F = n_features,
K = n_rbf, T = n_interactions, r_c = cutoff (Å):

    h⁰_i = embedding[Z_i]                                  (N, F)
    e_k(r) = exp(−γ (r − μ_k)²)                            (E, K)  μ_k = k r_c/(K − 1) Å,
                                                                   γ = 1/(2 Δμ²) 1/Å²
    W^t_ij = filter_t(e(r_ij)) · f_c(r_ij)                 (E, F)  Linear–ssp–Linear
    m^t_i = Σ_{j ∈ N(i)} (A_t h^t_j) ⊙ W^t_ij              (N, F)  index_add: i receives from j
    h^{t+1}_i = h^t_i + U_t(m^t_i)                         (N, F)  Linear–ssp–Linear, residual
    E_i = b_{Z_i} n_i + s · [R(h^T_i) − R(h̄^T_{Z_i})]      (N,)    eV; R: Linear–ssp–Linear → 1

with ssp(x) = softplus(x) − ln 2 (smooth; ssp(0) = 0), f_c the cosine or polynomial cutoff
(1 at r = 0, 0 with zero slope at r_c), c_i = Σ_j f_c(r_ij) a smooth coordination number,
s the ``energy_scale`` buffer (eV; the RMS training force × 1 Å, as for the Behler–Parrinello
model) and b_Z learnable per-element coordination energies (eV, fitted by least squares first).

**Isolated atoms give exactly 0.** h̄^T_Z is the final state of an atom of element Z that
receives no messages. It is computed by appending one "ghost" atom per element, with no edges,
to the batch: ghosts pass through the same layers in the same matrix products as the real
atoms, so an atom without neighbours has h^T_i = h̄^T_{Z_i} and E_i = 0 (and c_i = 0), i.e.
the potential returns E0 (bit for bit on CPU, where identical rows of one product are equal).
The subtraction removes the readout's constant per element; a plain per-element shift would
break this and is replaced by b_Z c_i, which vanishes for a free atom and smoothly as
neighbours leave the cutoff. An atom's energy approaches 0 continuously as its last neighbour
crosses r_c because every filter carries f_c.

**Receptive field.** Messages travel one edge per interaction, so E_i depends on the atoms
within T hops of i on the neighbour graph, hence on no atom farther than T · r_c from i
(15 Å for the config defaults T = 3, r_c = 5 Å). Atoms between r_c and T · r_c do influence
E_i when a chain of neighbours connects them; the potential is still a sum of per-atom
energies, and structures with no edge between them (fragments farther apart than r_c) are
additive. No angular triplets are needed (``angular_cutoff`` is None).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from mlpot import keys
from mlpot.descriptors.cutoff import baseline_coordination
from mlpot.models.message_passing import MessagePassingModel
from mlpot.neighbors import edge_vectors


class ShiftedSoftplus(nn.Module):
    """ssp(x) = ln(½eˣ + ½) = softplus(x) − ln 2: smooth, ssp(0) = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.softplus(x) - math.log(2.0)


def _two_layer(n_in: int, n_hidden: int, n_out: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), ShiftedSoftplus(),
                         nn.Linear(n_hidden, n_out, bias=bias))


class Interaction(nn.Module):
    """One continuous-filter convolution with its atom-wise update, (N, F) → (N, F)."""

    def __init__(self, n_features: int, n_rbf: int):
        super().__init__()
        self.filter = _two_layer(n_rbf, n_features, n_features)  # W(e(r)), (E, K) → (E, F)
        self.in2f = nn.Linear(n_features, n_features, bias=False)  # A_t
        self.update = _two_layer(n_features, n_features, n_features)  # U_t

    def forward(self, h: torch.Tensor, rbf: torch.Tensor, fc: torch.Tensor,
                centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        weights = self.filter(rbf) * fc[:, None]  # (E, F), 0 at r_c
        messages = self.in2f(h).index_select(0, neighbour) * weights  # (E, F), from j to i
        summed = torch.zeros_like(h).index_add(0, centre, messages)  # (N, F)
        return h + self.update(summed)


class SchNet(MessagePassingModel):
    """Continuous-filter message passing; returns per-atom energies (eV).

    Args:
        elements: atomic numbers the model covers.
        cutoff: neighbour cutoff r_c, Å.
        n_features: width F of atom features and filters.
        n_interactions: message-passing steps T (receptive field T · r_c).
        n_rbf: Gaussians K expanding each distance on [0, r_c].
        cutoff_function: "cosine" or "polynomial".
    """

    kind = "schnet"

    def __init__(self, elements, cutoff: float, n_features: int = 64, n_interactions: int = 3,
                 n_rbf: int = 20, cutoff_function: str = "cosine", baseline: str = "linear"):
        super().__init__(elements, cutoff, n_features, n_interactions, n_rbf, cutoff_function,
                         min_rbf=2, baseline=baseline)
        centres = torch.linspace(0.0, self._cutoff, self.n_rbf, dtype=torch.float64)  # μ_k, Å
        spacing = self._cutoff / (self.n_rbf - 1)
        self.register_buffer("rbf_centres", centres, persistent=False)
        self.rbf_gamma = 0.5 / spacing**2  # 1/Å²
        self.interactions = nn.ModuleList(Interaction(self.n_features, self.n_rbf)
                                          for _ in range(self.n_interactions))
        self.readout = _two_layer(self.n_features, max(self.n_features // 2, 1), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = self.species_index[batch[keys.NUMBERS]]  # (N,)
        centre, neighbour = batch[keys.EDGE_INDEX]
        r = edge_vectors(batch).norm(dim=-1)  # (E,) Å
        fc = self.cutoff_values(r)  # (E,)
        rbf = torch.exp(-self.rbf_gamma * (r[:, None] - self.rbf_centres.to(r.dtype)) ** 2)  # (E, K)
        h = self.initial_features(species)  # (N + n_el, F): atoms, then ghosts without edges
        for interaction in self.interactions:
            h = interaction(h, rbf, fc, centre, neighbour)
        coordination = baseline_coordination(
            fc.new_zeros(species.shape[0]).index_add(0, centre, fc), self.baseline)
        return {keys.ATOMIC_ENERGY: self.atomic_energy(h, species, coordination)}
