"""G5 angular symmetry functions from neighbour moments: O(neighbours), not O(neighbour pairs).

Without G4's r_jk factor a G5 sum factorises. With w_j = exp(−η r_ij²) f_c(r_ij), unit vectors
u_j and integer ζ, (1 + λ cos θ_jk)^ζ = Σ_n C(ζ, n) λ^n (u_j·u_k)^n and

    (u_j·u_k)^n = Σ_{|α|=n} n!/α! u_j^α u_k^α        (α: exponents of x, y, z)

so Σ_{j∈e, k∈e'} w_j w_k (u_j·u_k)^n = Σ_α n!/α! M_α[e] M_α[e'] with the moments
M_α[e] = Σ_{j∈e} w_j u_j^α of each neighbour element. Over ordered pairs of different
elements this counts every unordered pair once, as the triplet sum does; for one element the
unordered pairs j < k are half the full double sum less its j = k terms (cos θ = 1). The cost
is one set of (ζ_max + 1)(ζ_max + 2)(ζ_max + 3)/6 monomials per edge — 35 for ζ ≤ 4 —
instead of work per neighbour pair (~5,000 pairs per atom in liquid water at 6.35 Å).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

MAX_ZETA = 8  # larger ζ: 165+ monomials per edge, and the triplet sum is the better choice


def can_use_moments(zetas) -> bool:
    """Whether every ζ is an integer ≤ MAX_ZETA (the expansion is then exact)."""
    return all(float(z).is_integer() and 1 <= z <= MAX_ZETA for z in zetas)


class G5Moments(nn.Module):
    """The G5 sums of every (η, ζ, λ) and element pair per atom from moments.

    Args:
        etas: distinct η (1/Å²); shapes: distinct (ζ, λ) pairs, ζ integer.
    """

    def __init__(self, etas, shapes):
        super().__init__()
        shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
        max_degree = int(shapes[:, 0].max())
        exponents = [(a, b, n - a - b) for n in range(max_degree + 1)
                     for a in range(n, -1, -1) for b in range(n - a, -1, -1)]
        degree = [sum(e) for e in exponents]
        weight = [math.factorial(sum(e)) / math.prod(math.factorial(k) for k in e)
                  for e in exponents]
        # (monomials, degrees): the multinomial weight where the monomial has that degree
        by_degree = np.zeros((len(exponents), max_degree + 1))
        by_degree[np.arange(len(exponents)), degree] = weight
        # (shapes, degrees): 2^{1−ζ} C(ζ, n) λ^n, and the shape's value at cos θ = 1
        coefficients = np.array([[2.0 ** (1 - z) * math.comb(int(z), n) * lam**n
                                  if n <= z else 0.0 for n in range(max_degree + 1)]
                                 for z, lam in shapes])
        at_one = [2.0 ** (1 - z) * (1 + lam) ** z for z, lam in shapes]
        self.register_buffer("etas", torch.tensor(np.asarray(etas, dtype=np.float64)),
                             persistent=False)
        self.register_buffer("exponents", torch.tensor(exponents).T.contiguous(),
                             persistent=False)
        self.register_buffer("by_degree", torch.tensor(by_degree), persistent=False)
        self.register_buffer("coefficients", torch.tensor(coefficients), persistent=False)
        self.register_buffer("at_one", torch.tensor(at_one), persistent=False)
        self.max_degree = max_degree

    def forward(self, vectors: torch.Tensor, r: torch.Tensor, cut: torch.Tensor,
                center: torch.Tensor, neighbor_species: torch.Tensor, n_atoms: int,
                n_elements: int) -> torch.Tensor:
        """G5 sums (n_atoms, n_pairs, n_eta, n_shapes) for edge vectors (E, 3) Å, their
        lengths (E,) Å and angular cutoff values f_c (E,), centre atoms (E,) and neighbour
        element indices (E,); pairs ordered as itertools.combinations_with_replacement of
        the elements."""
        dtype = vectors.dtype
        u = vectors / r[:, None]
        weights = torch.exp(-self.etas.to(dtype) * (r * r)[:, None]) * cut[:, None]  # (E, η)
        powers = [torch.ones_like(u)]
        for _ in range(self.max_degree):
            powers.append(powers[-1] * u)
        powers = torch.stack(powers, dim=-1)  # (E, 3, degree + 1)
        ex, ey, ez = self.exponents
        monomials = powers[:, 0, ex] * powers[:, 1, ey] * powers[:, 2, ez]  # (E, K)
        slot = center * n_elements + neighbor_species
        n_eta, n_mono = weights.shape[1], monomials.shape[1]
        moments = vectors.new_zeros(n_atoms * n_elements, n_eta * n_mono).index_add(
            0, slot, (weights[:, :, None] * monomials[:, None, :]).reshape(-1, n_eta * n_mono))
        moments = moments.reshape(n_atoms, n_elements, n_eta, n_mono)
        self_terms = vectors.new_zeros(n_atoms * n_elements, n_eta).index_add(
            0, slot, weights * weights).reshape(n_atoms, n_elements, n_eta)
        by_degree, coefficients = self.by_degree.to(dtype), self.coefficients.to(dtype)
        blocks = []
        for a in range(n_elements):
            for b in range(a, n_elements):
                products = moments[:, a] * moments[:, b]  # (N, η, K)
                full = products @ by_degree @ coefficients.T  # (N, η, shapes)
                if a == b:
                    full = 0.5 * (full - self_terms[:, a, :, None] * self.at_one.to(dtype))
                blocks.append(full)
        return torch.stack(blocks, dim=1)
