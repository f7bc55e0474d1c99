"""Environment-dependent atomic charges that always sum to the structure's total charge.

A small per-element network on radial symmetry functions (the model's cutoff) predicts for
every atom a raw charge q̃_i and a positive weight w_i = softplus(s_i). The charges are then
shifted to the total charge Q of their structure, each in proportion to its weight
(PhysNet-style neutralisation with learned weights):

    q_i = q̃_i + w_i (Q − Σ_j q̃_j) / Σ_j w_j          (e; sums over the atoms of the structure)

so Σ_i q_i = Q exactly for any input (float rounding aside). The network is trained through
the Coulomb energy it produces (from energies and forces alone), and by reference dipoles
or atomic charges where the data has them.

With ``neutrality="fragments"`` predictions (eval mode) then shift the charges once more,
within each fragment (connected component of the neighbour graph at the cutoff), to an
integer fragment charge Q_c: the rounded sum of the fragment's structure-wide charges, the
rounding corrected (largest remainders) so that Σ_c Q_c = Q. Fragments too far apart to
see each other then cannot exchange a fraction of an electron (the failure of any
structure-wide scheme, Qeq included, for separated molecules and ions), and each carries
exactly the charges it has alone; a single fragment (any molecule, any condensed phase) is
unchanged. Training keeps the structure-wide charges: a fragment's integer charge does not
depend on the network, so it would pass no gradient to it, while the structure-wide charges
learn (through dipoles, energies and forces) what each separated fragment carries, which
the rounding then makes exact. The price: when two fragments come within the cutoff the
charges switch from per-fragment to joint neutralisation, a jump as large as the fragments'
structure-wide sums are far from integers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from mlpot import keys
from mlpot.models.element_head import ElementHead


NEUTRALITY = ("structure", "fragments")


class ChargeHead(ElementHead):
    """Per-atom charges (e) conserving each structure's total charge (batch ``charge``);
    ``neutrality``: "structure" or "fragments" (see the module docstring)."""

    def __init__(self, elements, cutoff: float, n_radial: int = 8, hidden: int = 16,
                 neutrality: str = "structure"):
        super().__init__(elements, cutoff, n_radial=n_radial, hidden=hidden, n_outputs=2)
        if neutrality not in NEUTRALITY:
            raise ValueError(f"neutrality must be one of {NEUTRALITY}, not {neutrality!r}")
        self.neutrality = neutrality

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Charges (n_atoms,), e."""
        raw = self.raw_outputs(batch)
        weights = functional.softplus(raw[:, 1]) + 1e-3
        charges = conserve_charge(raw[:, 0], weights, batch)
        if self.neutrality == "fragments" and not self.training:
            charges = conserve_charge(charges, weights, batch,
                                      fragment_charges(charges, batch))
        return charges


def conserve_charge(raw: torch.Tensor, weights: torch.Tensor, batch: dict[str, torch.Tensor],
                    groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q_i = q̃_i + w_i (Q_g − Σ_g q̃)/Σ_g w over groups g: the structures (Q = batch
    ``charge``, 0 if absent), or ``groups`` = (group of each atom, charge of each group)."""
    if groups is None:
        index = batch[keys.BATCH]
        n_groups = len(batch[keys.N_ATOMS])
        total = batch.get(keys.CHARGE)
        total = raw.new_zeros(n_groups) if total is None else total.to(raw.dtype)
    else:
        index, total = groups
        n_groups, total = len(total), total.to(raw.dtype)
    excess = total - raw.new_zeros(n_groups).index_add(0, index, raw)
    weight_sum = raw.new_zeros(n_groups).index_add(0, index, weights)
    return raw + weights * (excess / weight_sum)[index]


def fragment_charges(raw: torch.Tensor, batch: dict[str, torch.Tensor]):
    """(fragment of each atom, integer charge of each fragment): connected components of
    the batch's neighbour graph; each fragment gets the rounded sum of ``raw`` over it, the
    roundings corrected by largest remainders to sum to the structure's charge. Structures
    whose charge is not an integer stay one group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_atoms = len(raw)
    i, j = batch[keys.EDGE_INDEX].cpu().numpy()
    _, fragment = connected_components(coo_matrix((np.ones(len(i)), (i, j)),
                                                  shape=(n_atoms, n_atoms)), directed=False)
    structure = batch[keys.BATCH].cpu().numpy()
    totals = batch.get(keys.CHARGE)
    totals = (np.zeros(len(batch[keys.N_ATOMS])) if totals is None
              else totals.detach().cpu().numpy().astype(np.float64))
    raw_sum = np.bincount(fragment, weights=raw.detach().cpu().numpy().astype(np.float64))
    owner = np.zeros(len(raw_sum), dtype=np.int64)
    owner[fragment] = structure
    charges = np.rint(raw_sum)
    for b, total in enumerate(totals):
        members = np.nonzero(owner == b)[0]
        if abs(total - round(total)) > 1e-9:  # fractional total: the structure is one group
            fragment[structure == b] = members[0]
            charges[members[0]] = total
            continue
        missing = int(round(total - charges[members].sum()))
        step = np.sign(missing)
        for _ in range(abs(missing)):  # ±1 to the fragment whose raw sum lies nearest
            remainder = (raw_sum[members] - charges[members]) * step
            charges[members[np.argmax(remainder)]] += step
    used, fragment = np.unique(fragment, return_inverse=True)
    device = raw.device
    return (torch.as_tensor(fragment, device=device),
            torch.as_tensor(charges[used], device=device))
