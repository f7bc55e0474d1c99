"""Behler–Parrinello ensemble members evaluated together, not one after another.

Members that share a descriptor (same symmetry functions, cutoffs and coordination baseline;
they differ only in seeds, data and weights) need the symmetry functions q = (G, c) of a
batch once. Then

1. every member's per-element networks run as one stacked call (a batched matrix product
   per layer over the members' stacked weights), giving per-atom energies (M, n_atoms);
2. one backward pass through the networks gives g_m = ∂E_m/∂q for all members at once (the
   members are independent, so the gradient of Σ_m E_m with respect to member m's copy of q
   is ∂E_m/∂q);
3. one batched backward pass through the descriptor (``is_grads_batched``) turns the M
   cotangents g_m into M sets of forces −∂E_m/∂r (and stresses).

Same numbers as evaluating the members in turn (tests check it to rounding); on acac with 4
members about twice as fast (benchmarks/RESULTS.md), because the descriptor and its graph,
the dominant cost, are built once.
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn

from mlpot import keys
from mlpot.models.bpnn import BehlerParrinello
from mlpot.potential import attach_strain, derivatives


def can_stack(members) -> bool:
    """True if every member is a Behler–Parrinello model on the same descriptor, baseline,
    network shapes and dtype, without long-range terms (what stacking needs)."""
    models = [member.model for member in members]
    if not all(type(model) is BehlerParrinello for model in models) or any(
            member.physics_terms for member in members):
        return False
    first = models[0]
    return all(model.descriptor.config() == first.descriptor.config()
               and model.baseline == first.baseline and model.hidden == first.hidden
               and model.activation == first.activation for model in models) and len(
        {member.dtype for member in members}) == 1


def stacked_atomic_energies(models: list[BehlerParrinello], features: torch.Tensor,
                            coordination: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """Per-atom energies (M, n_atoms) eV of M models from shared descriptors.

    ``features`` (M, n_atoms, D) and ``coordination`` (M, n_atoms) are one copy per member
    (views of the same numbers), so that gradients come back per member."""
    dtype = features.dtype
    first = models[0]
    energy = features.new_zeros(features.shape[:2])
    for e, z in enumerate(first.descriptor.elements):
        atoms = torch.nonzero(species == e).squeeze(1)
        if len(atoms) == 0:
            continue
        networks = [model.networks[chemical_symbols[z]] for model in models]
        mean = torch.stack([model.feature_mean[e] for model in models]).to(dtype)[:, None]
        std = torch.stack([model.feature_std[e] for model in models]).to(dtype)[:, None]
        x = torch.cat([(features[:, atoms] - mean) / std, -mean / std], 1)  # last row: x⁰
        out = stacked_network(networks, x).squeeze(-1)  # (M, n_e + 1)
        energy = energy.index_add(1, atoms, out[:, :-1] - out[:, -1:])
    scale = torch.stack([model.energy_scale for model in models]).to(dtype)[:, None]
    baseline = torch.stack([model.coordination_energy for model in models]).to(dtype)
    return baseline[:, species] * coordination + energy * scale


def stacked_network(networks: list[nn.Sequential], x: torch.Tensor) -> torch.Tensor:
    """M networks of one shape (Linear and elementwise activation layers) on inputs x
    (M, n, n_in): member m's network on x[m], as one batched matrix product per layer."""
    for layers in zip(*networks):
        if isinstance(layers[0], nn.Linear):
            weight = torch.stack([layer.weight for layer in layers]).to(x.dtype)
            bias = torch.stack([layer.bias for layer in layers]).to(x.dtype)
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        else:
            x = layers[0](x)  # activations act elementwise and hold no weights
    return x


def stacked_forward(members, batch: dict[str, torch.Tensor], forces: bool = True,
                    stress: bool = False) -> dict[str, torch.Tensor]:
    """Every member's predictions, stacked on a leading axis of M (members as in
    :func:`can_stack`): ``keys.ENERGY`` (M, n_structures) eV float64, ``keys.ATOMIC_ENERGY``
    (M, n_atoms), ``keys.FORCES`` (M, n_atoms, 3) eV/Å, ``keys.STRESS`` (M, n_structures, 3, 3)
    eV/Å³, and the variance heads' ``keys.ENERGY_VAR_ALEATORIC`` / ``keys.FORCES_VAR_ALEATORIC``
    (M, …) where every member has one. Inference only (no graph is kept)."""
    batch, positions, strain = attach_strain(batch, forces, stress)
    models = [member.model for member in members]
    first = models[0]
    species = first.descriptor.species_index[batch[keys.NUMBERS]]
    with torch.set_grad_enabled(forces or stress):
        shared = (first.descriptor(batch), first.coordination(batch))
    n_members = len(members)
    leaves = [q.detach().requires_grad_(forces or stress) for q in shared]
    copies = [q.expand(n_members, *q.shape) for q in leaves]
    with torch.set_grad_enabled(forces or stress):
        atomic = stacked_atomic_energies(models, *copies, species)
    e0 = members[0].e0[batch[keys.NUMBERS]]
    atomic = atomic.double() + e0
    n_structures = batch[keys.CELL].shape[0]
    energy = atomic.new_zeros(n_members, n_structures).index_add(1, batch[keys.BATCH], atomic)
    out = {keys.ENERGY: energy.detach(), keys.ATOMIC_ENERGY: atomic.detach()}
    if forces or stress:
        cotangents = torch.autograd.grad(energy.sum(), copies)
        inputs = [positions] + ([strain] if stress else [])
        grads = torch.autograd.grad(shared, inputs, grad_outputs=cotangents,
                                    is_grads_batched=True, allow_unused=True)
        out.update(derivatives(grads, positions, strain, batch, forces))
    heads = [member.aleatoric(batch) for member in members]
    for key in (keys.ENERGY_VAR_ALEATORIC, keys.FORCES_VAR_ALEATORIC):
        if all(key in head for head in heads):
            out[key] = torch.stack([head[key] for head in heads])
    return out
