"""Closed-form ridge fit of the linear model on energies and forces together.

With E_b = Σ_i E0(Z_i) + Σ_Z w_Z · S_{b,Z}, where S_{b,Z} = Σ_{i∈b, Z_i=Z} G_i, both the
energies and the forces F = −Σ_Z w_Z · ∂S_Z/∂r are linear in w. Rows are standardised
exactly as in :class:`mlpot.train.loss.EnergyForceLoss` (energy per atom over σ_E, force
components over σ_F), so the ridge solution minimises the same likelihood-based loss.
The normal equations are accumulated batch by batch; the ridge strength is chosen on the
validation frames when not given.

The ridge acts on columns divided by their RMS, floored at the median column's: a descriptor
that barely varies over the training frames (a narrow radial Gaussian of a rare pair, O–O in
acac) is penalised like a typical one instead of being scaled up by its tiny spread, so its
weight stays small and a structure just outside the training range (an O–O distance 3 % beyond
it) does not get forces of volts per Å. On acac (benchmarks/RESULTS.md, issue 19) the floor
took the independent 300 K trajectory's force RMSE from 4.3× to 1.08× the validation RMSE and
600 K from 4·10⁶ to about 220 meV/Å, with the validation error unchanged (70.5 → 70.8 meV/Å).
"""

from __future__ import annotations

import numpy as np
import torch

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.potential import Potential


def _design_rows(potential: Potential, frames: list[Frame], sigma_energy: float,
                 sigma_force: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised design matrix A and targets y for ``frames`` (float64)."""
    descriptor = potential.model.descriptor
    batch = potential.batch(frames, dtype=torch.float64)
    species = descriptor.species_index[batch[keys.NUMBERS]]
    n_el, n_feat = len(descriptor.elements), descriptor.n_features
    n_struct = len(frames)
    slot = batch[keys.BATCH] * n_el + species

    def element_sums(positions):  # S[b, (e, d)]: per-structure, per-element feature sums
        features = descriptor({**batch, keys.POSITIONS: positions})
        sums = features.new_zeros(n_struct * n_el, n_feat).index_add(0, slot, features)
        return sums.reshape(n_struct, n_el * n_feat)

    positions = batch[keys.POSITIONS]
    n_atoms = batch[keys.N_ATOMS].double()
    e0 = potential.e0.double()[batch[keys.NUMBERS]]
    e0_sum = e0.new_zeros(n_struct).index_add(0, batch[keys.BATCH], e0)
    rows = [element_sums(positions).detach() / (n_atoms[:, None] * sigma_energy)]
    targets = [(batch[keys.ENERGY] - e0_sum) / (n_atoms * sigma_energy)]
    if keys.FORCES in batch and sigma_force is not None:
        # Structures are independent, so one forward-mode pass that moves atom a of every
        # structure along axis α gives ∂S_b/∂r_{b,a,α} for all b at once: 3·max(N) passes.
        offsets = torch.cumsum(batch[keys.N_ATOMS], 0) - batch[keys.N_ATOMS]
        local = torch.arange(len(positions)) - offsets[batch[keys.BATCH]]
        has = batch[keys.HAS_FORCES]
        for a in range(int(batch[keys.N_ATOMS].max())):
            atoms = torch.nonzero(local == a).squeeze(1)
            owners = batch[keys.BATCH][atoms]
            keep = has[owners]
            for alpha in range(3):
                tangent = torch.zeros_like(positions)
                tangent[atoms, alpha] = 1.0
                _, d_sums = torch.func.jvp(element_sums, (positions,), (tangent,))
                rows.append(-d_sums[owners[keep]] / sigma_force)
                targets.append(batch[keys.FORCES][atoms[keep], alpha] / sigma_force)
    return torch.cat(rows), torch.cat(targets)


def _normal_equations(potential, frames, sigma_energy, sigma_force, batch_size):
    gram, rhs, yy = None, None, 0.0
    for start in range(0, len(frames), batch_size):
        a, y = _design_rows(potential, list(frames[start:start + batch_size]),
                            sigma_energy, sigma_force)
        gram = a.T @ a if gram is None else gram + a.T @ a
        rhs = a.T @ y if rhs is None else rhs + a.T @ y
        yy += float(y @ y)
    return gram, rhs, yy


def column_scales(gram: torch.Tensor) -> torch.Tensor:
    """Each design column's RMS (from the normal equations' diagonal), floored at the median
    of the non-zero ones (see the module docstring)."""
    scale = torch.sqrt(torch.diagonal(gram) / gram.shape[0])
    positive = scale[scale > 0]
    return torch.clamp(scale, min=float(torch.median(positive)) if len(positive) else 1.0)


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_w |A w − y|² + λ (tr/n) |D w|² with gram = AᵀA, rhs = Aᵀy, D the diagonal of
    :func:`column_scales` and tr/n the mean diagonal of the scaled gram (so λ is relative)."""
    scale = column_scales(gram)
    scaled = gram / scale[:, None] / scale[None, :]
    eye = torch.eye(scaled.shape[0], dtype=scaled.dtype)
    w = torch.linalg.solve(scaled + lam * torch.trace(scaled) / len(scaled) * eye, rhs / scale)
    return w / scale


def fit_linear(potential: Potential, train: list[Frame], valid: list[Frame] | None = None,
               sigma_energy: float = 0.001, sigma_force: float | None = 0.03,
               ridge: float | None = None, batch_size: int = 64) -> dict:
    """Fit ``potential.model.weights`` in place; returns the chosen ridge and losses.

    ``sigma_force=None`` fits energies alone (fast: no descriptor derivatives).
    """
    model = potential.model
    gram, rhs, _ = _normal_equations(potential, train, sigma_energy, sigma_force, batch_size)

    def solve(lam):
        return ridge_solve(gram, rhs, lam)

    candidates = [ridge] if ridge is not None else [10.0**k for k in range(-12, 0)]
    if valid and len(candidates) > 1:
        v_gram, v_rhs, v_yy = _normal_equations(potential, valid, sigma_energy, sigma_force,
                                                batch_size)
        losses = []
        for lam in candidates:
            w = solve(lam)
            losses.append(float(w @ v_gram @ w - 2 * w @ v_rhs + v_yy))
        best = int(np.argmin(losses))
        chosen, valid_loss = candidates[best], losses[best]
    else:
        chosen, valid_loss = candidates[0], None
    weights = solve(chosen)
    with torch.no_grad():
        model.weights.copy_(weights.reshape(model.weights.shape))
    model.ridge = chosen
    return {"ridge": chosen, "valid_sum_squares": valid_loss}
