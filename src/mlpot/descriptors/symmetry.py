"""Element-resolved Behler–Parrinello atom-centred symmetry functions (radial G2, angular G4/G5).

Equations (J. Behler, J. Chem. Phys. 134, 074106 (2011)), with f_c a smooth cutoff:

  G2_i[e]    = Σ_{j∈e} exp(−η (r_ij − R_s)²) f_c(r_ij)                      (one block per element e)
  G4_i[e,e'] = 2^{1−ζ} Σ_{j<k, {Z_j,Z_k}={e,e'}} (1 + λ cos θ_ijk)^ζ
               exp(−η (r_ij² + r_ik² + r_jk²)) f_c(r_ij) f_c(r_ik) f_c(r_jk)  (one block per pair)
  G5_i[e,e'] = as G4 without the r_jk terms.

G5 with integer ζ ≤ 8 is summed from neighbour moments (descriptors/angular_moments.py): the
same values at a cost per neighbour instead of per neighbour pair, and no triplets needed.

Each unordered neighbour pair (j, k) is counted once (as dscribe does); Behler's sum over
all j ≠ k is twice this. Features are ordered [radial blocks by element | angular blocks by
element pair], each block ordered by the parameter grid.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from mlpot import keys
from mlpot.descriptors.angular_moments import G5Moments, can_use_moments
from mlpot.descriptors.cutoff import CUTOFF_FUNCTIONS
from mlpot.neighbors import edge_vectors


def default_radial(cutoff: float, n: int = 16, r_min: float = 0.5):
    """Evenly spaced shifts R_s from r_min to r_c (Å) with Gaussians as wide as their spacing.

    Returns (eta [1/Å²], shift [Å]) lists of length n.
    """
    shifts = np.linspace(r_min, cutoff, n)
    spacing = (cutoff - r_min) / max(n - 1, 1)
    eta = 1.0 / (2.0 * spacing**2)
    return [eta] * n, shifts.tolist()


def default_angular(cutoff: float, n_eta: int = 3, zetas=(1.0, 2.0, 4.0, 16.0),
                    lambdas=(-1.0, 1.0)):
    """Centred Gaussians with ranges from 1.5 Å to r_c, times angular resolutions ζ, λ = ±1.

    Returns (eta [1/Å²], zeta, lambda) lists of equal length (their full product grid).
    """
    ranges = np.geomspace(1.5, cutoff, n_eta)
    etas = (1.0 / (2.0 * ranges**2)).tolist()
    grid = list(itertools.product(etas, zetas, lambdas))
    return [g[0] for g in grid], [g[1] for g in grid], [g[2] for g in grid]


class SymmetryFunctions(nn.Module):
    """G2 + G4 (or G5) features per atom, (n_atoms, n_features); differentiable in positions.

    Args:
        elements: atomic numbers the descriptor resolves (sorted internally).
        cutoff: radial cutoff r_c, Å.
        angular_cutoff: cutoff of the angular terms, Å (≤ cutoff; defaults to cutoff).
        radial: (eta [1/Å²], shift [Å]) lists; default :func:`default_radial`.
        angular: (eta [1/Å²], zeta, lambda) lists; default :func:`default_angular`.
        angular_kind: "G4" or "G5".
        cutoff_function: "cosine" or "polynomial".
    """

    def __init__(self, elements, cutoff: float = 5.0, angular_cutoff: float | None = None,
                 radial=None, angular=None, angular_kind: str = "G4",
                 cutoff_function: str = "cosine"):
        super().__init__()
        if angular_kind not in ("G4", "G5"):
            raise ValueError(f"angular_kind must be G4 or G5, not {angular_kind!r}")
        if cutoff_function not in CUTOFF_FUNCTIONS:
            raise ValueError(f"cutoff_function must be one of {sorted(CUTOFF_FUNCTIONS)}")
        self.elements = sorted(int(z) for z in elements)
        self.cutoff = float(cutoff)
        self.angular_cutoff = float(angular_cutoff if angular_cutoff is not None else cutoff)
        if self.angular_cutoff > self.cutoff:
            raise ValueError("angular_cutoff must not exceed cutoff")
        self.angular_kind = angular_kind
        self.cutoff_function = cutoff_function
        radial = radial if radial is not None else default_radial(cutoff)
        angular = angular if angular is not None else default_angular(self.angular_cutoff)
        self.radial_parameters = [list(map(float, p)) for p in radial]
        self.angular_parameters = [list(map(float, p)) for p in angular]

        n_el = len(self.elements)
        species = torch.full((119,), -1, dtype=torch.long)
        species[self.elements] = torch.arange(n_el)
        pairs = torch.zeros(n_el, n_el, dtype=torch.long)
        for p, (a, b) in enumerate(itertools.combinations_with_replacement(range(n_el), 2)):
            pairs[a, b] = pairs[b, a] = p
        self.register_buffer("species_index", species, persistent=False)
        self.register_buffer("pair_index", pairs, persistent=False)
        self.register_buffer("radial_eta", torch.tensor(radial[0], dtype=torch.float64))
        self.register_buffer("radial_shift", torch.tensor(radial[1], dtype=torch.float64))
        self.register_buffer("angular_eta", torch.tensor(angular[0], dtype=torch.float64))
        self.register_buffer("angular_zeta", torch.tensor(angular[1], dtype=torch.float64))
        self.register_buffer("angular_lambda", torch.tensor(angular[2], dtype=torch.float64))
        # G4 = [radial factor of η] × [angular factor of (ζ, λ)]: each distinct factor is
        # computed once per triplet, then the (η, ζ, λ) columns are their products
        etas, eta_column = np.unique(np.asarray(angular[0], dtype=np.float64),
                                     return_inverse=True)
        shapes, shape_column = np.unique(np.stack([angular[1], angular[2]], 1).astype(np.float64)
                                         .reshape(-1, 2), axis=0, return_inverse=True)
        self.register_buffer("unique_eta", torch.tensor(etas), persistent=False)
        self.register_buffer("unique_zeta", torch.tensor(shapes[:, 0]), persistent=False)
        self.register_buffer("unique_lambda", torch.tensor(shapes[:, 1]), persistent=False)
        self.register_buffer("eta_column", torch.as_tensor(eta_column.ravel()), persistent=False)
        self.register_buffer("shape_column", torch.as_tensor(shape_column.ravel()),
                             persistent=False)
        # G5 with integer ζ ≤ 8: neighbour moments instead of a sum over triplets (same values)
        self.moments = (G5Moments(etas, shapes) if angular_kind == "G5" and angular[0]
                        and can_use_moments(angular[1]) else None)
        self.n_pairs = n_el * (n_el + 1) // 2
        self.n_radial = n_el * len(radial[0])
        self.n_features = self.n_radial + self.n_pairs * len(angular[0])

    @property
    def needs_triplets(self) -> bool:
        """Whether the features need the batch's triplets (angular terms summed per pair of
        neighbours; G5 from moments does not)."""
        return bool(self.angular_parameters[0]) and self.moments is None

    def config(self) -> dict:
        """Arguments that rebuild this descriptor."""
        return dict(elements=self.elements, cutoff=self.cutoff, angular_cutoff=self.angular_cutoff,
                    radial=self.radial_parameters, angular=self.angular_parameters,
                    angular_kind=self.angular_kind, cutoff_function=self.cutoff_function)

    def feature_names(self) -> list[str]:
        """Human-readable name of every feature column."""
        from ase.data import chemical_symbols as sym

        names = [f"G2[{sym[e]}](eta={eta:.3g},Rs={rs:.3g})" for e in self.elements
                 for eta, rs in zip(*self.radial_parameters)]
        pairs = itertools.combinations_with_replacement(self.elements, 2)
        names += [f"{self.angular_kind}[{sym[a]}{sym[b]}](eta={eta:.3g},zeta={z:g},lambda={lam:g})"
                  for a, b in pairs for eta, z, lam in zip(*self.angular_parameters)]
        return names

    def _cutoff(self, r: torch.Tensor, cutoff: float) -> torch.Tensor:
        return CUTOFF_FUNCTIONS[self.cutoff_function](r, cutoff)

    def forward(self, batch: dict[str, torch.Tensor], angular: bool = True) -> torch.Tensor:
        """Features (n_atoms, n_features); ``angular=False``: the radial blocks alone."""
        positions = batch[keys.POSITIONS]
        dtype, n_atoms = positions.dtype, positions.shape[0]
        species = self.species_index[batch[keys.NUMBERS]]
        center, neighbor = batch[keys.EDGE_INDEX]
        vectors = edge_vectors(batch)
        r = vectors.norm(dim=-1)

        # radial G2: one Gaussian per (eta, R_s), summed per (centre, neighbour element)
        eta, shift = self.radial_eta.to(dtype), self.radial_shift.to(dtype)
        g2 = torch.exp(-eta * (r[:, None] - shift) ** 2) * self._cutoff(r, self.cutoff)[:, None]
        n_el = len(self.elements)
        radial = positions.new_zeros(n_atoms * n_el, g2.shape[1])
        radial = radial.index_add(0, center * n_el + species[neighbor], g2)
        features = [radial.reshape(n_atoms, -1)]

        if angular and self.angular_parameters[0]:
            features.append(self._angular(batch, vectors, r, species, n_atoms))
        return torch.cat(features, dim=1)

    def _angular(self, batch, vectors, r, species, n_atoms) -> torch.Tensor:
        if self.moments is not None:
            center, neighbor = batch[keys.EDGE_INDEX]
            cut = self._cutoff(r, self.angular_cutoff)
            sums = self.moments(vectors, r, cut, center, species[neighbor], n_atoms,
                                len(self.elements))  # (N, pairs, distinct η, distinct ζ, λ)
            return sums[:, :, self.eta_column, self.shape_column].reshape(n_atoms, -1)
        ij, ik = batch[keys.TRIPLETS]
        center = batch[keys.EDGE_INDEX][0]
        g = self.angular_terms(vectors.index_select(0, ij), vectors.index_select(0, ik))
        angular = vectors.new_zeros(n_atoms * self.n_pairs, g.shape[1])
        angular = angular.index_add(0, center[ij] * self.n_pairs
                                    + self.triplet_pairs(batch, species), g)
        return angular.reshape(n_atoms, -1)

    def triplet_pairs(self, batch, species) -> torch.Tensor:
        """Element-pair block (n_triplets,) of every triplet's angular terms."""
        ij, ik = batch[keys.TRIPLETS]
        neighbor = batch[keys.EDGE_INDEX][1]
        return self.pair_index[species[neighbor[ij]], species[neighbor[ik]]]

    def angular_terms(self, v_ij: torch.Tensor, v_ik: torch.Tensor) -> torch.Tensor:
        """Each triplet's angular terms (n_triplets, n_pairs' block width) from its two edge
        vectors (n_triplets, 3), Å; summed per centre and element pair they are the angular
        features."""
        dtype = v_ij.dtype
        r_ij, r_ik = v_ij.norm(dim=-1), v_ik.norm(dim=-1)
        cos = (v_ij * v_ik).sum(-1) / (r_ij * r_ik)
        eta = self.unique_eta.to(dtype)
        zeta = self.unique_zeta.to(dtype)
        lam = self.unique_lambda.to(dtype)
        rc = self.angular_cutoff
        cut = self._cutoff(r_ij, rc) * self._cutoff(r_ik, rc)
        squares = r_ij**2 + r_ik**2
        if self.angular_kind == "G4":
            r_jk = (v_ik - v_ij).norm(dim=-1)
            cut = cut * self._cutoff(r_jk, rc)
            squares = squares + r_jk**2
        # clamp: (1 + λcosθ) = 0 at θ = 0 or π would make the 2nd derivative of x^ζ NaN
        base = (1.0 + lam * cos[:, None]).clamp(min=1e-12)
        shape = (2.0 ** (1.0 - zeta)) * base**zeta  # (n_triplets, distinct (ζ, λ))
        radial = torch.exp(-eta * squares[:, None]) * cut[:, None]  # (n_triplets, distinct η)
        return radial.index_select(1, self.eta_column) * shape.index_select(1, self.shape_column)

    def extra_repr(self) -> str:
        return (f"elements={self.elements}, cutoff={self.cutoff}, "
                f"angular_cutoff={self.angular_cutoff}, n_features={self.n_features}, "
                f"angular_kind={self.angular_kind}, cutoff_function={self.cutoff_function}")
