"""Electrostatics as a sibling of the local model: learned charges and their Coulomb energy.

E_total = E0 + E_short(model) + E_coulomb(q), with q from :class:`ChargeHead` (conserving
each structure's total charge) and E_coulomb from :class:`Coulomb` (switched off inside the
exclusion radius, where the local model describes the interaction).
"""

from __future__ import annotations

import torch
from torch import nn

from mlpot import keys
from mlpot.physics.charges import ChargeHead
from mlpot.physics.coulomb import Coulomb
from mlpot.physics.d4 import D4Reference


class Electrostatics(nn.Module):
    """Per-atom charges (e) and Coulomb energies (eV) of a batch.

    Args:
        elements: atomic numbers.  cutoff: Å, of the charge network's descriptors.
        exclusion_radius: Å (default: ``cutoff``).  real_cutoff: Ewald real space, Å.
        n_radial, hidden: size of the charge network.
        pme_from: cells with at least this many atoms use PME instead of Ewald.
        neutrality: "fragments", "structure" or "none" (:mod:`mlpot.physics.charges`).
        formal_networks: "fragments" decides the integers with networks of their own (else
            with the raw charges, as files before version 9).
    """

    def __init__(self, elements, cutoff: float, exclusion_radius: float | None = None,
                 real_cutoff: float = 10.0, n_radial: int = 8, hidden: int = 16,
                 pme_from: int = 400, neutrality: str = "fragments",
                 formal_networks: bool = True):
        super().__init__()
        self.charge_head = ChargeHead(elements, cutoff, n_radial=n_radial, hidden=hidden,
                                      neutrality=neutrality, formal_networks=formal_networks)
        self.coulomb = Coulomb(cutoff if exclusion_radius is None else exclusion_radius,
                               real_cutoff=real_cutoff, pme_from=pme_from)
        self._d4 = D4Reference()  # EEQ charges of the structures seen in training

    def config(self) -> dict:
        head = self.charge_head.config()
        return dict(elements=head["elements"], cutoff=head["cutoff"],
                    exclusion_radius=self.coulomb.exclusion_radius,
                    real_cutoff=self.coulomb.real_cutoff, n_radial=head["n_radial"],
                    hidden=head["hidden"], pme_from=self.coulomb.pme_from,
                    neutrality=self.charge_head.neutrality,
                    formal_networks=self.charge_head.formal_networks is not None)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``keys.CHARGES`` (n_atoms,) e, per-atom Coulomb energies ``"atomic"`` (n_atoms,)
        eV, ``keys.DIPOLE`` (n_structures, 3) e·Å (zero for periodic structures) and
        ``keys.CHARGE_EXCESS`` (what the neutralisation supplied, e); in training also
        ``keys.CHARGE_EEQ_DEVIATION``, q − q_EEQ (e) of the atoms of structures that are
        one fragment at the cutoff (D4's EEQ charges, :mod:`mlpot.physics.d4`)."""
        charges, excess, whole = self.charge_head(batch)
        atomic = self.coulomb(charges, batch)
        index = batch[keys.BATCH]
        dipole = charges.new_zeros(len(batch[keys.N_ATOMS]), 3).index_add(
            0, index, charges[:, None] * batch[keys.POSITIONS])
        dipole = dipole * (~batch[keys.PBC].any(1))[:, None]
        out = {keys.CHARGES: charges, "atomic": atomic, keys.DIPOLE: dipole,
               keys.CHARGE_EXCESS: excess}
        if self.training:  # D4's EEQ charges where the structure's charge is the data's
            eeq = torch.as_tensor(self._d4(batch, "charges"), dtype=charges.dtype,
                                  device=charges.device)
            out[keys.CHARGE_EEQ_DEVIATION] = (charges - eeq)[whole[index]]
        return out
