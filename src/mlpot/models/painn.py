"""PaiNN: equivariant message passing with scalar and vector atom features.

After Schütt, Unke and Gastegger, ICML 2021 (arXiv:2102.03150), Sec. 3 and Fig. 2: the
message block (Δs^m, Δv^m) and the update block (Δv^u, Δs^u), with a smooth cutoff on every
filter. It is mlpot's equivariant model (config kind ``painn``). N atoms, E edges (i, j) of
the neighbour list (both directions), F = n_features, K = n_rbf, T = n_interactions,
r_c = cutoff (Å), r̂_ij = r_ij / r_ij the unit vector from i to j; ⊙ multiplies feature-wise
(a scalar channel f scales the 3-vector of channel f):

    s⁰_i = embedding[Z_i],   v⁰_i = 0                          (N, F), (N, 3, F)
    e_k(r) = sin(kπ r / r_c) / r,   k = 1 … K                  (E, K)  1/Å
    [x^vv, x^s, x^vs]_ij = φ_t(s_j) ⊙ W_t e(r_ij) f_c(r_ij)     (E, 3F) split in 3 × (E, F)
  message, summed by index_add (i receives from j):
    s_i ← s_i + Σ_j x^s_ij                                     (N, F)
    v_i ← v_i + Σ_j (x^vv_ij ⊙ v_j + x^vs_ij ⊙ r̂_ij)             (N, 3, F)
  update, atom by atom:
    ‖V v_i‖_ε = (Σ_xyz (V_t v_i)² + ε)^½                        (N, F)
    [a^vv, a^sv, a^ss]_i = a_t(s_i, ‖V v_i‖_ε)                  (N, 3F) split in 3 × (N, F)
    v_i ← v_i + a^vv_i ⊙ U_t v_i                                (N, 3, F)
    s_i ← s_i + a^sv_i ⊙ ⟨U_t v_i, V_t v_i⟩ + a^ss_i             (N, F)  ⟨,⟩ sums x, y, z
  readout:
    E_i = b_{Z_i} n_i + s · [R(s^T_i) − R(s̄^T_{Z_i})]         (N,)  eV

φ_t (F → 3F), a_t (the 2F features [s_i, ‖V v_i‖_ε] → 3F) and R (F → 1) are Linear–SiLU–Linear;
W_t is Linear K → 3F; U_t and V_t are bias-free Linear F → F that mix channels and act on each
Cartesian component alike. f_c is the cosine or polynomial cutoff (1 at r = 0, 0 with zero
slope at r_c), c_i = Σ_j f_c(r_ij) a smooth coordination number, s the ``energy_scale`` buffer
(eV; the RMS training force × 1 Å) and b_Z learnable per-element coordination energies (eV,
fitted by least squares first), exactly as for SchNet. The sinc basis is the paper's; SiLU
keeps every layer smooth, so forces and their parameter gradients are continuous.

**Why it is equivariant.** Geometry enters only through r_ij (scalar) and r̂_ij (a polar
vector). Under any orthogonal map Q (rotation or reflection) of the positions, r̂_ij → Q r̂_ij,
and if v_j → Q v_j every term of v_i's update is a scalar times a vector that maps with Q
(U, V mix channels, never Cartesian components), so v_i → Q v_i; the scalars see vectors
only through ‖V v‖ and ⟨U v, V v⟩, which Q (Qᵀ Q = 1) leaves unchanged. Hence s and E are
invariant under O(3) — reflections included, since no cross product (pseudovector) appears —
and forces F = −∂E/∂r rotate with Q. No Clebsch–Gordan coefficients are needed (l ≤ 1).

**Safe norm.** ‖V v‖_ε with ε = ``NORM_EPS`` = 10⁻² (features are dimensionless and of order
one) has a finite gradient and a finite second derivative (at most ε^-½ = 10) where V v = 0,
which happens for every isolated atom and at inversion-symmetric sites (the centre of a
linear O=C=O, any atom of a perfect monatomic crystal); force training differentiates twice,
and the square root of a plain sum of squares gives NaN there. (schnetpack's ε = 10⁻⁸ makes
that second derivative up to 10⁴, a sharp feature of width 10⁻⁴ in the energy around V v = 0.)

**Isolated atoms give exactly 0.** An atom without neighbours gets no messages, so its v stays
0, but the update still changes its s (a^ss ≠ 0). As in SchNet, s̄^T_Z is the final state of one
"ghost" atom per element appended to the batch without edges, passed through the same matrix
products, so an isolated atom has s^T_i = s̄^T_{Z_i}, E_i = 0 and c_i = 0: the potential
returns E0. Its energy approaches that continuously as its last neighbour crosses r_c, since
every filter, hence every message, carries f_c.

**Receptive field.** One edge per interaction (the update block is atom-wise), so E_i depends
on atoms within T hops on the neighbour graph, at most T · r_c from i (15 Å for the config
defaults T = 3, r_c = 5 Å). Fragments with no edge between them are additive. No angular
triplets are needed (``angular_cutoff`` is None): angles enter through ⟨v, v⟩ products.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlpot import keys
from mlpot.models.message_passing import MessagePassingModel
from mlpot.neighbors import edge_vectors

NORM_EPS = 1e-2  # ε of the safe norm ‖V v‖_ε (dimensionless features); see module doc


def _two_layer(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class Message(nn.Module):
    """Δs^m, Δv^m: continuous-filter messages from neighbours j to atoms i."""

    def __init__(self, n_features: int, n_rbf: int):
        super().__init__()
        self.n_features = n_features
        self.context = _two_layer(n_features, n_features, 3 * n_features)  # φ_t
        self.filter = nn.Linear(n_rbf, 3 * n_features)  # W_t

    def forward(self, s, v, rbf, fc, direction, centre, neighbour):
        """s (N, F), v (N, 3, F), rbf (E, K), fc (E,), direction r̂ (E, 3) → new s, v."""
        # index_select, not s[neighbour]: its gradient is an index_add (cheaper)
        x = self.context(s).index_select(0, neighbour) * (self.filter(rbf) * fc[:, None])
        x_vv, x_s, x_vs = torch.split(x, self.n_features, dim=-1)  # 3 × (E, F)
        dv = (v.index_select(0, neighbour) * x_vv[:, None, :]
              + direction[:, :, None] * x_vs[:, None, :])
        return (s.index_add(0, centre, x_s),  # (N, F)
                v.index_add(0, centre, dv))  # (N, 3, F)


class Update(nn.Module):
    """Δv^u, Δs^u: atom-wise mixing of the scalar and vector channels."""

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features
        self.mix = nn.Linear(n_features, 2 * n_features, bias=False)  # [U_t, V_t]
        self.context = _two_layer(2 * n_features, n_features, 3 * n_features)  # a_t

    def forward(self, s: torch.Tensor, v: torch.Tensor):
        """s (N, F), v (N, 3, F) → new s, v."""
        uv, vv = torch.split(self.mix(v), self.n_features, dim=-1)  # 2 × (N, 3, F)
        norm = torch.sqrt((vv * vv).sum(dim=1) + NORM_EPS)  # ‖V v‖_ε, (N, F)
        a = self.context(torch.cat([s, norm], dim=-1))  # (N, 3F)
        a_vv, a_sv, a_ss = torch.split(a, self.n_features, dim=-1)
        return s + a_sv * (uv * vv).sum(dim=1) + a_ss, v + a_vv[:, None, :] * uv


class PaiNN(MessagePassingModel):
    """Equivariant message passing (scalar + vector features); returns per-atom energies (eV).

    Args:
        elements: atomic numbers the model covers.
        cutoff: neighbour cutoff r_c, Å.
        n_features: width F of the scalar and of the vector features.
        n_interactions: message + update blocks T (receptive field T · r_c).
        n_rbf: sinc functions sin(kπr/r_c)/r, k = 1 … K, expanding each distance.
        cutoff_function: "cosine" or "polynomial".
    """

    kind = "painn"

    def __init__(self, elements, cutoff: float, n_features: int = 64, n_interactions: int = 3,
                 n_rbf: int = 20, cutoff_function: str = "cosine", baseline: str = "linear"):
        super().__init__(elements, cutoff, n_features, n_interactions, n_rbf, cutoff_function,
                         baseline=baseline)
        wavenumbers = torch.arange(1, self.n_rbf + 1, dtype=torch.float64) * math.pi / cutoff
        self.register_buffer("rbf_wavenumbers", wavenumbers, persistent=False)  # kπ/r_c, 1/Å
        self.messages = nn.ModuleList(Message(self.n_features, self.n_rbf)
                                      for _ in range(self.n_interactions))
        self.updates = nn.ModuleList(Update(self.n_features) for _ in range(self.n_interactions))
        self.readout = _two_layer(self.n_features, max(self.n_features // 2, 1), 1)

    def features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final scalar features s^T (N + n_el, F), invariant, and vector features
        v^T (N + n_el, 3, F), equivariant: the batch's N atoms, then one ghost per element."""
        species = self.species_index[batch[keys.NUMBERS]]  # (N,)
        centre, neighbour = batch[keys.EDGE_INDEX]
        vectors = edge_vectors(batch)  # (E, 3) Å
        r = vectors.norm(dim=-1)  # (E,) Å, > 0: atoms closer than 0.1 Å are rejected on read
        dtype = r.dtype
        fc = self.cutoff_values(r)  # (E,)
        rbf = torch.sin(r[:, None] * self.rbf_wavenumbers.to(dtype)) / r[:, None]  # (E, K)
        direction = vectors / r[:, None]  # (E, 3)

        # atoms followed by one ghost atom per element; ghosts have no edges (see module doc)
        s = self.initial_features(species)  # (N + n_el, F)
        v = s.new_zeros(s.shape[0], 3, self.n_features)  # (N + n_el, 3, F)
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, rbf, fc, direction, centre, neighbour)
            s, v = update(s, v)
        return s, v

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = self.species_index[batch[keys.NUMBERS]]  # (N,)
        s, _ = self.features(batch)
        return {keys.ATOMIC_ENERGY: self.atomic_energy(s, species, self.coordination(batch))}
