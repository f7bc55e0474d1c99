"""Environment-dependent atomic charges that always sum to the structure's total charge.

A small per-element network on radial symmetry functions (the model's cutoff) predicts for
every atom a raw charge q̃_i and a positive weight w_i = softplus(s_i). The charges are then
shifted to the total charge Q of their structure, each in proportion to its weight
(PhysNet-style neutralisation with learned weights):

    q_i = q̃_i + w_i (Q − Σ_j q̃_j) / Σ_j w_j          (e; sums over the atoms of the structure)

so Σ_i q_i = Q exactly for any input (float rounding aside). The network is trained through
the Coulomb energy it produces (from energies and forces alone), and by reference dipoles
where the data has them.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from mlpot import keys
from mlpot.models.element_head import ElementHead


class ChargeHead(ElementHead):
    """Per-atom charges (e) conserving each structure's total charge (batch ``charge``)."""

    def __init__(self, elements, cutoff: float, n_radial: int = 8, hidden: int = 16):
        super().__init__(elements, cutoff, n_radial=n_radial, hidden=hidden, n_outputs=2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Charges (n_atoms,), e."""
        raw = self.raw_outputs(batch)
        return conserve_charge(raw[:, 0], functional.softplus(raw[:, 1]) + 1e-3, batch)


def conserve_charge(raw: torch.Tensor, weights: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """q_i = q̃_i + w_i (Q − Σq̃)/Σw per structure (Q = batch ``charge``, 0 if absent)."""
    index = batch[keys.BATCH]
    n_structures = len(batch[keys.N_ATOMS])
    total = batch.get(keys.CHARGE)
    total = raw.new_zeros(n_structures) if total is None else total.to(raw.dtype)
    excess = total - raw.new_zeros(n_structures).index_add(0, index, raw)
    weight_sum = raw.new_zeros(n_structures).index_add(0, index, weights)
    return raw + weights * (excess / weight_sum)[index]
