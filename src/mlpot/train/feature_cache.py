"""Training-time cache of descriptors and their position derivatives (Behler–Parrinello).

Training structures never move, so each atom's descriptor row q_i = (G_i, c_i) (symmetry
functions and coordination number) and its derivatives ∂q_i/∂r_j can be computed once.
A training step then runs only the networks: with g_i = ∂E/∂q_i from autograd (kept in the
graph for the force loss), the forces are the chain rule of the very same autograd forces
the Potential computes,

    F_j = −Σ_i g_i · ∂q_i/∂r_j,

(tests check they agree to rounding) at a fraction of the cost, because the symmetry
functions and their second derivatives are no longer re-evaluated every step. This is the
classic approach of n2p2 and aenet. Memory: Σ_b P_b · (D + 1) · 3 numbers, where P_b ≤ N_b²
counts the atom pairs (i, j) with j = i or j inside i's cutoff.
"""

from __future__ import annotations

import torch

from mlpot import keys
from mlpot.data.batch import structure_jacobian
from mlpot.data.records import Frame
from mlpot.progress import bar as tqdm
from mlpot.neighbors import edge_vectors


def cache_bytes(frames: list[Frame], n_features: int, dtype: torch.dtype) -> int:
    """Upper bound of the cache's memory, bytes (every atom pair counted)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(len(f) ** 2 for f in frames) * (n_features + 1) * 3 * itemsize


class FeatureCache:
    """Descriptors q = (G, c) and ∂q/∂r of fixed training frames for a Behler–Parrinello model."""

    def __init__(self, potential, frames: list[Frame], dtype=torch.float32, chunk: int = 16,
                 progress: bool = True):
        self.frames = frames
        self.dtype = dtype
        self.items: list[dict[str, torch.Tensor]] = []
        model = potential.model
        starts = range(0, len(frames), chunk)
        for start in tqdm(starts, desc="caching descriptors", disable=not progress,
                          leave=False):
            self.items += self._compute(potential, model, frames[start:start + chunk])

    @staticmethod
    def atoms_per_call(frames: list[Frame], chunk: int = 16) -> int:
        """Size of the work of one chunk, in atoms: the chunk's atoms times its 3·max_n
        forward-mode tangents (for :func:`mlpot.threads.choose_threads`)."""
        sizes = [len(f) for f in frames[:chunk]]
        return sum(sizes) * 3 * max(sizes, default=0)

    def _compute(self, potential, model, frames: list[Frame]) -> list[dict]:
        batch = potential.batch(frames, dtype=self.dtype)
        descriptor = model.descriptor

        def rows(pos, angular: bool = True):  # descriptor rows and coordination
            moved = {**batch, keys.POSITIONS: pos}
            return torch.cat([descriptor(moved, angular=angular),
                              model.coordination(moved)[:, None]], 1)

        with torch.no_grad():
            q = rows(batch[keys.POSITIONS])
        n_atoms = batch[keys.N_ATOMS]
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        # jac[i, d, a, α] = ∂q_id / ∂r_{b(i), a, α}, (n_atoms, D+1, max_n, 3)
        if descriptor.needs_triplets or descriptor.n_features == descriptor.n_radial:
            # radial rows by forward mode over positions (cheap per tangent), angular ones
            # from their six per-triplet tangents
            radial = structure_jacobian(lambda pos: rows(pos, angular=False),
                                        batch).permute(2, 3, 0, 1)
            n_radial = descriptor.n_radial
            jac = torch.cat([radial[:, :n_radial], angular_jacobian(descriptor, batch),
                             radial[:, n_radial:]], dim=1)
        else:  # angular features without triplets (G5 from moments): all by positions
            jac = structure_jacobian(rows, batch).permute(2, 3, 0, 1)
        e0 = potential.e0.double()[batch[keys.NUMBERS]]
        species = model.descriptor.species_index[batch[keys.NUMBERS]]
        items = []
        for b, frame in enumerate(frames):
            atoms = slice(int(offsets[b]), int(offsets[b] + n_atoms[b]))
            block = jac[atoms, :, :len(frame)]  # (N, D+1, N, 3)
            pair_i, pair_j = torch.nonzero(block.abs().amax(dim=(1, 3)) > 0, as_tuple=True)
            item = {"q": q[atoms], "species": species[atoms],
                    "pair_i": pair_i, "pair_j": pair_j,
                    "jac": block[pair_i, :, pair_j].contiguous(),  # (P, D+1, 3)
                    "e0": float(e0[atoms].sum()), "energy": frame.energy,
                    "forces": (torch.from_numpy(frame.forces).to(self.dtype)
                               if frame.forces is not None else None)}
            items.append(item)
        return items

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Concatenate cached frames; pair indices offset into the batch's atoms."""
        items = [self.items[k] for k in indices]
        sizes = torch.tensor([len(it["q"]) for it in items])
        offsets = torch.cumsum(sizes, 0) - sizes
        has_forces = torch.tensor([it["forces"] is not None for it in items])
        return {
            "q": torch.cat([it["q"] for it in items]),
            "species": torch.cat([it["species"] for it in items]),
            keys.BATCH: torch.repeat_interleave(torch.arange(len(items)), sizes),
            keys.N_ATOMS: sizes,
            "pair_i": torch.cat([it["pair_i"] + o for it, o in zip(items, offsets)]),
            "pair_j": torch.cat([it["pair_j"] + o for it, o in zip(items, offsets)]),
            "jac": torch.cat([it["jac"] for it in items]),
            "e0": torch.tensor([it["e0"] for it in items], dtype=torch.float64),
            keys.ENERGY: torch.tensor([it["energy"] for it in items], dtype=torch.float64),
            keys.HAS_FORCES: has_forces,
            keys.FORCES: torch.cat([it["forces"] if it["forces"] is not None
                                    else torch.zeros(len(it["q"]), 3, dtype=self.dtype)
                                    for it in items]),
        }


def angular_jacobian(descriptor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂G_i/∂r_a of the angular features, (n_atoms, n_angular_features, max_n, 3), a the
    atom's index in its structure.

    Each triplet's terms depend on its two edge vectors v_ij, v_ik alone, so six
    forward-mode tangents (each moving one of them along x, y or z in every triplet at once)
    give every triplet's derivatives; with v_ij = r_j − r_i + shift they go to atoms j and k,
    and their negative sum to the centre i. Far fewer passes than the 3·max_n tangents of
    positions :func:`~mlpot.data.batch.structure_jacobian` needs."""
    n_atoms = len(batch[keys.POSITIONS])
    max_n = int(batch[keys.N_ATOMS].max())
    n_columns = descriptor.n_features - descriptor.n_radial
    if not n_columns:
        return batch[keys.POSITIONS].new_zeros(n_atoms, 0, max_n, 3)
    vectors = edge_vectors(batch).detach()
    ij, ik = batch[keys.TRIPLETS]
    center, neighbor = batch[keys.EDGE_INDEX]
    v_ij, v_ik = vectors.index_select(0, ij), vectors.index_select(0, ik)
    eye = torch.eye(3, dtype=vectors.dtype)
    tangents_ij = torch.cat([eye, torch.zeros_like(eye)])  # (6, 3): v_ij's x, y, z, then none
    tangents_ik = torch.cat([torch.zeros_like(eye), eye])

    def along(t_ij, t_ik):
        return torch.func.jvp(descriptor.angular_terms, (v_ij, v_ik),
                              (t_ij.expand_as(v_ij), t_ik.expand_as(v_ik)))[1]

    derivative = torch.func.vmap(along)(tangents_ij, tangents_ik)  # (6, n_triplets, C)
    d_ij = derivative[:3].permute(1, 2, 0)  # (n_triplets, C, 3)
    d_ik = derivative[3:].permute(1, 2, 0)
    n_atoms_of = batch[keys.N_ATOMS]
    local = (torch.arange(n_atoms) - (torch.cumsum(n_atoms_of, 0) - n_atoms_of)[batch[keys.BATCH]])
    species = descriptor.species_index[batch[keys.NUMBERS]]
    i = center[ij]
    block = (i * descriptor.n_pairs + descriptor.triplet_pairs(batch, species)) * max_n
    out = vectors.new_zeros(n_atoms * descriptor.n_pairs * max_n, *d_ij.shape[1:])
    out = out.index_add(0, block + local[neighbor[ij]], d_ij)
    out = out.index_add(0, block + local[neighbor[ik]], d_ik)
    out = out.index_add(0, block + local[i], -(d_ij + d_ik))
    width = d_ij.shape[1]  # columns of one element pair's block
    return (out.reshape(n_atoms, descriptor.n_pairs, max_n, width, 3)
            .permute(0, 1, 3, 2, 4).reshape(n_atoms, descriptor.n_pairs * width, max_n, 3))


def predict_cached(model, batch: dict[str, torch.Tensor],
                   create_graph: bool = True) -> dict[str, torch.Tensor]:
    """Energies (n_structures,) eV (float64, as the Potential's) and forces (n_atoms, 3) eV/Å
    from a cached batch."""
    q = batch["q"].detach().requires_grad_(True)
    atomic = model.atomic_energies(q[:, :-1], q[:, -1], batch["species"])
    n_structures = len(batch[keys.N_ATOMS])
    energy = batch["e0"] + atomic.double().new_zeros(n_structures).index_add(
        0, batch[keys.BATCH], atomic.double())
    (g,) = torch.autograd.grad(atomic.sum(), q, create_graph=create_graph)
    per_pair = torch.einsum("pd,pda->pa", g[batch["pair_i"]], batch["jac"])
    forces = -per_pair.new_zeros(len(q), 3).index_add(0, batch["pair_j"], per_pair)
    return {keys.ENERGY: energy, keys.FORCES: forces}
