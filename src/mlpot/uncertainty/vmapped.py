"""Message-passing ensemble members evaluated together with ``torch.func.vmap``.

Members of one architecture (same class, same ``config()``, same dtype, no long-range terms)
are one function E(θ, r) at M parameter sets θ_m. Their parameters (and saved buffers such as
the energy scale) are stacked on a leading axis of M, and the model's forward pass runs once
under ``vmap`` over that axis (``torch.func.functional_call``): every matrix product becomes
one batched product, M forward passes one pass of M-wide tensors. Member m reads its own copy
r_m of the positions (and ε_m of the strain), all equal to the batch's, so that one ordinary
backward pass of Σ_m E_m gives every member's own derivatives at once:

    F_m = −∂E_m/∂r_m  (M, n_atoms, 3) eV/Å,   σ_m = (1/V) ∂E_m/∂ε_m  (M, B, 3, 3) eV/Å³

with ε a zero symmetric strain of positions and cell (:func:`mlpot.potential.attach_strain`).
Energies are float64 eV including each member's E0, as the potential returns them. Variance
heads do not depend on gradients and run member by member. Inference only: no graph is kept.

One backward pass outside ``vmap`` was faster on CPU than ``vmap(torch.func.grad_and_value)``
(a gradient transform per member inside ``vmap``, positions shared): 4 members on one acac
molecule, 10 against 12 ms (SchNet), 48 against 63 ms (equivariant). Batching removes
per-operation overhead, not arithmetic, so on a CPU it pays only for small graphs (there 0.6–0.8
of the time of the members in turn); on large ones the M-wide tensors (batched matrix products
with the bias added apart, more memory traffic) make it 1.1–1.5 times slower
(benchmarks/ensemble_vmap_cost.py). :func:`vmap_pays` holds that rule.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from mlpot import keys
from mlpot.models.message_passing import MessagePassingModel
from mlpot.potential import derivatives

# vmap on CPU up to this many edges (all structures of the batch): 4 members, 1 thread, the
# break-even lay between 190 (PaiNN) and ~700 (SchNet, equivariant) edges
MAX_EDGES_CPU = 400


def can_vmap(members) -> bool:
    """True if every member is a message-passing model (SchNet, PaiNN, equivariant: the kinds
    tested under ``vmap``) of one class, one ``config()`` and one dtype, without long-range
    terms."""
    first = members[0].model
    if not isinstance(first, MessagePassingModel) or any(
            member.physics_terms for member in members):
        return False
    return all(type(member.model) is type(first) and member.model.config() == first.config()
               for member in members) and len({member.dtype for member in members}) == 1


def vmap_pays(batch: dict[str, torch.Tensor]) -> bool:
    """Whether vmapping is expected to beat evaluating the members in turn for ``batch``:
    always off the CPU (where launch overhead dominates: 0.3–0.4 of the time on an H200,
    benchmarks/RESULTS.md), on the CPU for graphs of at most :data:`MAX_EDGES_CPU` edges
    (about one small molecule)."""
    positions = batch[keys.POSITIONS]
    return positions.device.type != "cpu" or batch[keys.EDGE_INDEX].shape[1] <= MAX_EDGES_CPU


def stacked_state(models) -> tuple[dict, dict, dict]:
    """(parameters, buffers, shared): the models' parameters and saved buffers stacked on a
    leading axis of M (detached), and the first model's unsaved buffers — tables built from
    the config (species index, radial centres, coupling coefficients), equal for every
    member of one config, so passed once."""
    first = models[0]
    unsaved = {name for name, _ in first.named_buffers()} - set(first.state_dict())
    shared = {name: value for name, value in first.named_buffers() if name in unsaved}
    with torch.no_grad():
        named = [dict(model.named_parameters()) for model in models]
        params = {name: torch.stack([n[name] for n in named]) for name in named[0]}
        named = [dict(model.named_buffers()) for model in models]
        buffers = {name: torch.stack([n[name] for n in named]) for name in named[0]
                   if name not in unsaved}
    return params, buffers, shared


def state_key(models) -> tuple:
    """What identifies the models' current weights for :func:`stacked_state`: every parameter
    and buffer's storage and version counter, which an in-place change (an optimiser step,
    ``load_state_dict``) or a replacement (``.to()``) moves."""
    return tuple((tensor.data_ptr(), tensor._version) for model in models
                 for tensor in (*model.parameters(), *model.buffers()))


def vmapped_forward(members, batch: dict[str, torch.Tensor], forces: bool = True,
                    stress: bool = False, state: tuple | None = None) -> dict[str, torch.Tensor]:
    """Every member's predictions, stacked on a leading axis of M (members as in
    :func:`can_vmap`), as :func:`mlpot.uncertainty.stacked.stacked_forward` returns them:
    ``keys.ENERGY`` (M, n_structures) eV float64, ``keys.ATOMIC_ENERGY`` (M, n_atoms) eV,
    ``keys.FORCES`` (M, n_atoms, 3) eV/Å and ``keys.STRESS`` (M, n_structures, 3, 3) eV/Å³ in
    the model's dtype, and the variance heads' ``keys.ENERGY_VAR_ALEATORIC`` /
    ``keys.FORCES_VAR_ALEATORIC`` (M, …) where every member has one. No graph is kept.
    ``state``: :func:`stacked_state` of the members' models if already built (for reuse
    between calls while :func:`state_key` is unchanged)."""
    models = [member.model for member in members]
    base = models[0]
    params, buffers, shared = state if state is not None else stacked_state(models)
    n_members, n_structures = len(members), batch[keys.CELL].shape[0]
    structure = batch[keys.BATCH]
    gradients = forces or stress
    # one copy of positions and strain per member: ∂(Σ_m E_m)/∂r_m = ∂E_m/∂r
    positions = batch[keys.POSITIONS].detach().expand(n_members, -1, -1).clone()
    strain = positions.new_zeros(n_members, n_structures, 3, 3)
    positions.requires_grad_(gradients)
    strain.requires_grad_(stress)

    def atomic_energy(params, buffers, positions, strain):
        """One member's per-atom energies (n_atoms,) eV at its copy of positions and strain."""
        member_batch = {**batch, keys.POSITIONS: positions}
        if stress:  # as attach_strain: ε acts on positions and cell alike
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            member_batch[keys.POSITIONS] = positions + torch.einsum(
                "na,nab->nb", positions, symmetric[structure])
            member_batch[keys.CELL] = batch[keys.CELL] + batch[keys.CELL] @ symmetric
        return functional_call(base, (params, buffers, shared),
                               (member_batch,))[keys.ATOMIC_ENERGY]

    with torch.set_grad_enabled(gradients):
        atomic = vmap(atomic_energy)(params, buffers, positions, strain)  # (M, n_atoms)
        # E0 (~1e3 eV per atom) added in float64, as Potential.forward does
        e0 = torch.stack([member.e0 for member in members])[:, batch[keys.NUMBERS]]
        atomic = atomic.double() + e0
        energy = atomic.new_zeros(n_members, n_structures).index_add(1, structure, atomic)
    out = {keys.ENERGY: energy.detach(), keys.ATOMIC_ENERGY: atomic.detach()}
    if gradients:
        inputs = [positions] + ([strain] if stress else [])
        grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
        out.update(derivatives(grads, positions, strain if stress else None, batch, forces))
    with torch.no_grad():
        heads = [member.aleatoric(batch) for member in members]
    for key in (keys.ENERGY_VAR_ALEATORIC, keys.FORCES_VAR_ALEATORIC):
        if all(key in head for head in heads):
            out[key] = torch.stack([head[key] for head in heads])
    return out
