"""Environment-dependent atomic charges that always sum to the structure's total charge.

A small per-element network on radial symmetry functions (the model's cutoff r_c) predicts for
every atom a raw charge q̃_i and a positive weight w_i = softplus(s_i). The raw charges are
then shifted so that a group of atoms g carries its target charge T_g, each atom in
proportion to its weight (PhysNet-style neutralisation with learned weights):

    q_i = q̃_i + w_i (T_g − Σ_{j∈g} q̃_j) / Σ_{j∈g} w_j          (e)

``neutrality`` chooses the groups:

- ``"fragments"`` (the default): size-consistent by construction. Fragments are the connected
  components of the graph of atom pairs closer than r. At r = r_c (the charge network's reach)
  fragments cannot see each other; each gets an integer T: the rounded sum of its formal
  charges f_i (below), the roundings corrected (largest remainders) to add up to the
  structure's charge Q. Below
  r_c a fragment splits where its longest link (single-linkage, the minimum spanning tree)
  is longer than r; the two parts share their parent's integer T, the part whose formal sum
  lies nearer an integer keeping its rounding. The charges average the neutralisation over r
  with a smooth weight on [r_c/2, r_c]:

      q = q̃ + ∫ ρ(r) δ(r) dr,   ρ(r) = d/dr (1 − cos π(r − r_c/2)/(r_c/2))/2,

  where δ(r) is the shift above with the fragments at r. The integral is a sum over the
  links whose length lies in [r_c/2, r_c], each weighted by the ρ-mass between it and the next,
  so it changes continuously (with a continuous derivative) as a link crosses r_c or r_c/2.
  Consequences: two parts farther apart than r_c get exactly the charges each has alone with
  its own integer charge (no fraction of an electron crosses empty space, the failure of any
  structure-wide scheme, Qeq included); parts closer than r_c/2 (a molecule's bonds, hydrogen
  bonds, an ion in its first shell) are neutralised together; Σ q = Q exactly. The one
  discontinuity left is a rounding that flips: a fragment whose formal sum crosses a
  half-integer (a fragment that is as much a cation as a radical). Training keeps formal
  sums near integers (the ``excess`` loss term), where that does not happen.

  The formal charges come from per-element networks of their own on the same inputs (files
  before version 9: the raw charges q̃ themselves). Which fragment carries which integer is a
  discrete choice that no energy gradient can reach, and the raw charges' sums are what the
  energies pull at; tied together, a prior strong enough to keep the sums at the data's
  totals slowed the learning of the charge distribution (Na⁺–water: water O −0.16 e instead
  of −0.78) and a weak one let the first epochs drag a lone Cl⁻'s −1 onto its partner
  (benchmarks/RESULTS.md). Apart, the formal networks learn only the totals, the charge
  networks only what the energies say.
- ``"structure"``: one group per structure, T = Q (the 4G-HDNNP / PhysNet choice; separated
  fragments exchange fractions of charge).
- ``"none"``: no shift, q = q̃ (latent charges as in LES; Σ q = Q only as far as training
  teaches it).

``excess`` (returned beside the charges): T − Σ f ("fragments") or T − Σ q̃ ("structure",
"none"), for each structure that is one fragment at the cutoff (every structure for
"structure" and "none"): there T is the data's total charge. Training penalises it (σ of
``training.sigma_charge_excess``), so the formal networks learn what each isolated fragment
carries (a lone ion, a lone molecule), and :mod:`mlpot.train.formal_charges` fits them so
before the first epoch. Structures of several fragments give none: their integers come from the
model's own rounding, and a prior on those would defend whatever assignment the network
started with (an ion's charge on its distant neutral partner).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional

from mlpot import keys
from mlpot.models.element_head import ElementHead
from mlpot.neighbors import edge_vectors

NEUTRALITY = ("fragments", "structure", "none")
INNER_FRACTION = 0.5  # fragments are blended over [INNER_FRACTION · r_c, r_c]


class ChargeHead(ElementHead):
    """Per-atom charges (e) conserving each structure's total charge (batch ``charge``);
    ``neutrality``: "fragments", "structure" or "none" (see the module docstring)."""

    def __init__(self, elements, cutoff: float, n_radial: int = 8, hidden: int = 16,
                 neutrality: str = "fragments", formal_networks: bool = True):
        super().__init__(elements, cutoff, n_radial=n_radial, hidden=hidden, n_outputs=2)
        if neutrality not in NEUTRALITY:
            raise ValueError(f"neutrality must be one of {NEUTRALITY}, not {neutrality!r}")
        self.neutrality = neutrality
        # "fragments": which fragment carries which integer follows these networks' sums (files
        # before version 9: the raw charges' sums)
        self.formal_networks = (self.element_networks(1)
                                if formal_networks and neutrality == "fragments" else None)

    def forward(self, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(charges (n_atoms,) e, excess (n_whole,) e, whole (n_structures,) bool: the
        structures that are one group, whose charge the data gives; see the module
        docstring)."""
        x, species = self.standardised_features(batch)
        raw = self.apply_networks(self.networks, x, species)
        charges, weights = raw[:, 0], functional.softplus(raw[:, 1]) + 1e-3
        if self.neutrality == "fragments":
            formal = (charges if self.formal_networks is None
                      else self.apply_networks(self.formal_networks, x, species)[:, 0])
            return neutralise_fragments(charges, weights, formal, batch, self.descriptor.cutoff)
        structure = batch[keys.BATCH]
        excess = structure_charges(batch, charges) - charges.new_zeros(
            len(batch[keys.N_ATOMS])).index_add(0, structure, charges)
        if self.neutrality == "structure":
            charges = charges + shares(weights, structure, excess)
        return charges, excess, torch.ones_like(excess, dtype=torch.bool)


def structure_charges(batch: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Total charge of each structure (batch ``charge``, 0 if absent), e."""
    total = batch.get(keys.CHARGE)
    n_structures = len(batch[keys.N_ATOMS])
    return like.new_zeros(n_structures) if total is None else total.to(like.dtype)


def shares(weights: torch.Tensor, group: torch.Tensor, excess: torch.Tensor) -> torch.Tensor:
    """w_i excess_g / Σ_g w: each group's excess handed out to its atoms by weight (e)."""
    weight_sum = weights.new_zeros(len(excess)).index_add(0, group, weights)
    return weights * (excess / weight_sum)[group]


def blend_fraction(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """P(r): the ρ-mass below r, 0 at r ≤ r_c/2 rising as (1 − cos)/2 to 1 at r ≥ r_c."""
    inner = INNER_FRACTION * cutoff
    x = ((r - inner) / (cutoff - inner)).clamp(0.0, 1.0)
    return 0.5 * (1.0 - torch.cos(math.pi * x))


def neutralise_fragments(raw: torch.Tensor, weights: torch.Tensor, formal: torch.Tensor,
                         batch: dict[str, torch.Tensor], cutoff: float):
    """(charges, formal excess of each structure that is one fragment at the cutoff, that
    mask per structure): the ``"fragments"`` scheme. ``raw``, ``weights``: the charge
    network's outputs (e, > 0); ``formal``: the per-atom numbers whose fragment sums decide
    the integers (e)."""
    links, lengths = spanning_links(batch, cutoff)
    n_atoms = len(raw)
    structure = batch[keys.BATCH].cpu().numpy()
    totals = structure_charges(batch, raw).detach().cpu().numpy().astype(np.float64)
    fractional = np.abs(totals - np.rint(totals)) > 1e-9
    # a structure with a fractional total charge stays one group at every level
    bound = _chain_structures(np.nonzero(fractional)[0], structure)
    length_values = lengths.detach().cpu().numpy()
    splits = np.argsort(-length_values, kind="stable")
    splits = splits[length_values[splits] >= INNER_FRACTION * cutoff]
    formal_values = formal.detach().cpu().numpy().astype(np.float64)

    levels = _levels(n_atoms, links, bound, splits)
    labels = levels[0]
    targets = top_targets = _top_targets(labels, formal_values, structure, totals)
    mass_above = raw.new_tensor(1.0)  # P(r_c); P(r_c/2) = 0
    charges, level_excess = raw, _excess(targets, labels, raw)
    for link, new_labels in zip(splits, levels[1:]):  # links removed from the longest down
        below = blend_fraction(lengths[link], cutoff)
        charges = charges + (mass_above - below) * shares(weights, _tensor(labels, raw),
                                                          level_excess)
        mass_above = below
        targets = _split_targets(targets, labels, new_labels, links[:, link], formal_values)
        labels = new_labels
        level_excess = _excess(targets, labels, raw)
    charges = charges + mass_above * shares(weights, _tensor(labels, raw), level_excess)
    whole = _whole_structures(levels[0], structure, len(totals))
    excess = _excess(top_targets, levels[0], formal)[whole[_owners(levels[0], structure)]]
    return charges, excess, torch.as_tensor(whole, device=raw.device)


def _owners(labels: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """(n_fragments,) the structure of each fragment."""
    owner = np.zeros(labels.max() + 1, dtype=np.int64)
    owner[labels] = structure
    return owner


def _whole_structures(labels: np.ndarray, structure: np.ndarray, n_structures: int
                      ) -> np.ndarray:
    """(n_structures,) bool: the structure is one fragment at the cutoff (its integer
    charge is the data's, not a rounding of the model's formal sums)."""
    return np.bincount(_owners(labels, structure), minlength=n_structures) == 1


def _tensor(labels: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(labels, device=like.device)


def _excess(targets: np.ndarray, labels: np.ndarray, values: torch.Tensor) -> torch.Tensor:
    """T_g − Σ_g of the per-atom ``values`` (raw or formal charges) over the groups
    ``labels`` (differentiable in the values)."""
    return torch.as_tensor(targets, dtype=values.dtype, device=values.device) - \
        values.new_zeros(len(targets)).index_add(0, _tensor(labels, values), values)


def spanning_links(batch: dict[str, torch.Tensor], cutoff: float):
    """(links (2, n_links) atom pairs, lengths (n_links,) Å, differentiable): the minimum
    spanning forest of the batch's atom pairs closer than ``cutoff`` (the single-linkage
    tree: the fragments at any r ≤ cutoff are its components after removing links ≥ r)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    i, j = batch[keys.EDGE_INDEX]
    lengths = edge_vectors(batch).norm(dim=1)
    d = lengths.detach().cpu().numpy()
    i_np, j_np = i.cpu().numpy(), j.cpu().numpy()
    candidate = np.nonzero((i_np < j_np) & (d < cutoff))[0]
    n_atoms = len(batch[keys.NUMBERS])
    if len(candidate) == 0:
        return np.zeros((2, 0), dtype=np.int64), lengths[:0]
    # the shortest image of each pair (periodic cells list a pair once per image)
    order = candidate[np.lexsort((d[candidate], j_np[candidate], i_np[candidate]))]
    pair = i_np[order] * n_atoms + j_np[order]
    shortest = np.r_[True, pair[1:] != pair[:-1]]
    first, pair = order[shortest], pair[shortest]
    tree = minimum_spanning_tree(coo_matrix((d[first], (i_np[first], j_np[first])),
                                            shape=(n_atoms, n_atoms))).tocoo()
    a, b = np.minimum(tree.row, tree.col), np.maximum(tree.row, tree.col)
    edges = first[np.searchsorted(pair, a * n_atoms + b)]
    links = np.stack([a, b]).astype(np.int64)
    return links, lengths[torch.as_tensor(edges, device=lengths.device)]


def _chain_structures(members: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Links (2, n) tying all atoms of each structure in ``members`` into one group."""
    links = []
    for b in members:
        atoms = np.nonzero(structure == b)[0]
        links.append(np.stack([np.full(len(atoms) - 1, atoms[0]), atoms[1:]]))
    return np.concatenate(links, axis=1) if links else np.zeros((2, 0), dtype=np.int64)


def _levels(n_atoms: int, links: np.ndarray, bound: np.ndarray,
            splits: np.ndarray) -> list[np.ndarray]:
    """Fragment labels (0 … n_fragments − 1 per atom) at every level: [all links, all but
    splits[0], all but splits[:2], …]. Built bottom-up: the components without any split
    link (one graph search), then merging across each split link from the shortest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    always = np.ones(links.shape[1], dtype=bool)
    always[splits] = False
    kept = np.concatenate([links[:, always], bound], axis=1)
    graph = coo_matrix((np.ones(kept.shape[1]), (kept[0], kept[1])), shape=(n_atoms, n_atoms))
    label = connected_components(graph, directed=False)[1]
    levels = [label]
    for link in splits[::-1]:
        a, b = label[links[0, link]], label[links[1, link]]
        if a != b:
            label = np.where(label == b, a, label)
        levels.append(label)
    return [np.unique(level, return_inverse=True)[1] for level in levels[::-1]]


def _top_targets(labels: np.ndarray, formal: np.ndarray, structure: np.ndarray,
                 totals: np.ndarray) -> np.ndarray:
    """Integer charge of each fragment: its rounded formal sum, corrected by largest
    remainders so that each structure's fragments add up to its total (a fractional total:
    the one group of that structure carries it)."""
    formal_sum = np.bincount(labels, weights=formal)
    owner = _owners(labels, structure)
    targets = np.rint(formal_sum)
    for b, total in enumerate(totals):
        members = np.nonzero(owner == b)[0]
        if abs(total - round(total)) > 1e-9:
            targets[members] = total  # one member: _chain_structures tied the structure
            continue
        missing = int(round(total - targets[members].sum()))
        step = np.sign(missing)
        for _ in range(abs(missing)):  # ±1 to the fragment whose raw sum lies nearest
            remainder = (formal_sum[members] - targets[members]) * step
            targets[members[np.argmax(remainder)]] += step
    return targets


def _split_targets(targets: np.ndarray, labels: np.ndarray, new_labels: np.ndarray,
                   link: np.ndarray, formal: np.ndarray) -> np.ndarray:
    """Targets after removing ``link``: unchanged groups keep theirs; if the link split a
    fragment (charge T) into parts A and B with formal sums s_A, s_B, A gets the integer
    nearest to (s_A + T − s_B)/2 (the split that leaves both parts nearest their formal
    sums) and B the rest."""
    parent_of = np.zeros(new_labels.max() + 1, dtype=np.int64)
    parent_of[new_labels] = labels
    new_targets = targets[parent_of].copy()
    a, b = new_labels[link[0]], new_labels[link[1]]
    if a != b:
        total = targets[labels[link[0]]]
        formal_sum = np.bincount(new_labels, weights=formal, minlength=len(parent_of))
        new_targets[a] = np.rint((formal_sum[a] + total - formal_sum[b]) / 2)
        new_targets[b] = total - new_targets[a]
    return new_targets
