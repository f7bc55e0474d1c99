"""Smooth cutoff functions f_c(r): 1 at r = 0, 0 with vanishing slope at r = r_c (Å)."""

import math

import torch

from mlpot import keys
from mlpot.neighbors import edge_vectors


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Behler's f_c = ½[cos(π r / r_c) + 1] for r < r_c, else 0 (continuous first derivative)."""
    return torch.where(r < cutoff, 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0),
                       torch.zeros_like(r))


def polynomial_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """f_c = 1 − 10x³ + 15x⁴ − 6x⁵, x = r / r_c (Behler 2011, J. Chem. Phys. 134, 074106):
    continuous up to the second derivative, so forces are smooth at the cutoff too."""
    x = (r / cutoff).clamp(max=1.0)
    return torch.where(r < cutoff, 1.0 + x**3 * (-10.0 + x * (15.0 - 6.0 * x)),
                       torch.zeros_like(r))


CUTOFF_FUNCTIONS = {"cosine": cosine_cutoff, "polynomial": polynomial_cutoff}


def coordination_number(batch: dict[str, torch.Tensor], cutoff: float,
                        cutoff_function: str = "cosine") -> torch.Tensor:
    """Smooth coordination number c_i = Σ_j f_c(r_ij) of every atom, (n_atoms,); 0 if alone."""
    r = edge_vectors(batch).norm(dim=-1)
    fc = CUTOFF_FUNCTIONS[cutoff_function](r, cutoff)
    return fc.new_zeros(batch[keys.NUMBERS].shape[0]).index_add(0, batch[keys.EDGE_INDEX][0], fc)


BASELINES = ("saturating", "linear")


def baseline_coordination(c: torch.Tensor, baseline: str) -> torch.Tensor:
    """Input of the per-element baseline energy b_Z · x_i from coordination numbers c_i.

    "linear": x = c. "saturating": x = 1 − exp(−c), which is 0 for a free atom, rises
    smoothly as neighbours enter the cutoff and is flat (≈ 1) in any bonded environment, so
    the baseline removes the binding energy without pushing atoms together. A linear baseline
    adds forces b_Z ∂c/∂r that the networks must cancel (on acac: RMS 2 eV/Å, twice the
    true forces). On acac the saturating form trained faster at 300 K but transferred worse to
    600 K (benchmarks/RESULTS.md), so "linear" stays the default for now.
    """
    if baseline == "linear":
        return c
    if baseline == "saturating":
        return -torch.expm1(-c)
    raise ValueError(f"baseline must be one of {BASELINES}, not {baseline!r}")
