"""Ensemble members of one architecture evaluated together with ``torch.func.vmap``.

Members that differ only in their weights (same class, same ``config()``, same dtype, no
long-range terms) are one function E(θ, r, ε) evaluated at M parameter sets θ_m. Their
parameters and buffers are stacked on a leading axis (``torch.func.stack_module_state``),
and one ``vmap`` over that axis of

    (θ_m, r, ε) ↦ (∂E_m/∂r, ∂E_m/∂ε), E_m           ``torch.func.grad_and_value``

runs the model once on a batch of M weight sets (``functional_call``): every matrix product
becomes a batched one, and the M forward and backward passes are a single pass of M-wide
tensors instead of M Python calls. Forces are F_m = −∂E_m/∂r (eV/Å) and stress
σ_m = (1/V) ∂E_m/∂ε (eV/Å³), with ε the zero symmetric strain applied to positions and cell
(as :func:`mlpot.potential.attach_strain` does); energies are float64 eV, as the potential's.
The variance heads (if any) do not depend on gradients and run per member outside ``vmap``.

Inference only: ``torch.func.grad`` keeps no graph for a loss on forces.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from mlpot import keys


def can_vmap(members) -> bool:
    """True if every member's model is of one class with one ``config()`` (hyper-parameters)
    and one dtype, none has long-range terms, and the class is known to run under ``vmap``."""
    models = [member.model for member in members]
    first = models[0]
    if not hasattr(first, "config") or any(member.physics_terms for member in members):
        return False
    return all(type(model) is type(first) and model.config() == first.config()
               for model in models) and len({member.dtype for member in members}) == 1


def _stacked_state(models):
    """Parameters and buffers of ``models`` stacked on a leading member axis (detached)."""
    params, buffers = stack_module_state(models)
    return ({name: value.detach() for name, value in params.items()},
            {name: value.detach() for name, value in buffers.items()})


def vmapped_forward(members, batch: dict[str, torch.Tensor], forces: bool = True,
                    stress: bool = False) -> dict[str, torch.Tensor]:
    """Every member's predictions, stacked on a leading axis of M (members as in
    :func:`can_vmap`): ``keys.ENERGY`` (M, n_structures) eV float64, ``keys.ATOMIC_ENERGY``
    (M, n_atoms) eV, ``keys.FORCES`` (M, n_atoms, 3) eV/Å, ``keys.STRESS``
    (M, n_structures, 3, 3) eV/Å³ in the model's dtype, and the variance heads'
    ``keys.ENERGY_VAR_ALEATORIC`` / ``keys.FORCES_VAR_ALEATORIC`` (M, …) where every member
    has one. Inference only (no graph is kept): the same output as
    :func:`mlpot.uncertainty.stacked.stacked_forward`."""
    models = [member.model for member in members]
    base = models[0]
    params, buffers = _stacked_state(models)
    positions = batch[keys.POSITIONS].detach()
    n_structures = batch[keys.CELL].shape[0]
    structure = batch[keys.BATCH]
    e0 = members[0].e0[batch[keys.NUMBERS]]  # (n_atoms,) float64 eV

    def energy(params, buffers, positions, strain):
        """Σ_structures E (for the gradient) and (E (B,), E_i (N,)) of one member."""
        strained = dict(batch)
        if strain is not None:  # positions and cell under the strain ε, as attach_strain
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("na,nab->nb", positions,
                                                 symmetric[structure])
            strained[keys.CELL] = batch[keys.CELL] + batch[keys.CELL] @ symmetric
        strained[keys.POSITIONS] = positions
        atomic = functional_call(base, (params, buffers), (strained,))[keys.ATOMIC_ENERGY]
        atomic = atomic.double() + e0
        total = atomic.new_zeros(n_structures).index_add(0, structure, atomic)
        return total.sum(), (total, atomic)

    strain = (positions.new_zeros(n_structures, 3, 3) if stress else None)
    with torch.no_grad():
        if forces or stress:
            argnums = (2, 3) if stress else 2
            grads, (_, (total, atomic)) = vmap(
                grad_and_value(energy, argnums=argnums, has_aux=True),
                in_dims=(0, 0, None, None))(params, buffers, positions, strain)
        else:
            _, (total, atomic) = vmap(energy, in_dims=(0, 0, None, None))(
                params, buffers, positions, strain)
        out = {keys.ENERGY: total, keys.ATOMIC_ENERGY: atomic}
        if stress:
            d_positions, d_strain = grads
            volume = torch.linalg.det(batch[keys.CELL]).abs()
            out[keys.STRESS] = d_strain / volume[:, None, None]
        elif forces:
            d_positions = grads
        if forces:
            out[keys.FORCES] = -d_positions
        heads = [member.aleatoric(batch) for member in members]
    for key in (keys.ENERGY_VAR_ALEATORIC, keys.FORCES_VAR_ALEATORIC):
        if all(key in head for head in heads):
            out[key] = torch.stack([head[key] for head in heads])
    return out
