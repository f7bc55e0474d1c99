"""Covalent coordination numbers: two transferable numbers per atom.

D3's counting function (Grimme et al., J. Chem. Phys. 132, 154104 (2010)), smoothly cut off,
and its polarity-weighted twin (bonds weighted by the Pauling electronegativity difference,
as D4's charge model weights them):

    CN_i = Σ_j c_ij,   EN_i = Σ_j (χ_j − χ_i) c_ij,
    c_ij = s(r_ij) / (1 + exp(−16 (4/3 (R_i + R_j) / r_ij − 1)))

with R the covalent radii (ASE's, Cordero 2008; Å), χ Pauling electronegativities and s a C²
switch from 1 to 0 over the last ångström before the cutoff (where c is ~1e-5 already). EN
tells a hydrogen on oxygen (+1.2, positive) from one on carbon (+0.35). They count
bonded neighbours (≈ 4 for an sp³ carbon, 3 for sp², 1 for hydrogen) and barely see anything
else, so a network on them meets familiar values in molecules it was not trained on, where
radial symmetry functions of a new bond pattern are out of distribution.
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols, covalent_radii
from torch import nn

from mlpot import keys
from mlpot.descriptors.cutoff import polynomial_cutoff
from mlpot.neighbors import edge_vectors

# Pauling electronegativities, H–Xe (CRC Handbook); noble gases without one count as their
# bonding partner (no polarity)
PAULING = {1: 2.20, 3: 0.98, 4: 1.57, 5: 2.04, 6: 2.55, 7: 3.04, 8: 3.44, 9: 3.98, 11: 0.93,
           12: 1.31, 13: 1.61, 14: 1.90, 15: 2.19, 16: 2.58, 17: 3.16, 19: 0.82, 20: 1.00,
           21: 1.36, 22: 1.54, 23: 1.63, 24: 1.66, 25: 1.55, 26: 1.83, 27: 1.88, 28: 1.91,
           29: 1.90, 30: 1.65, 31: 1.81, 32: 2.01, 33: 2.18, 34: 2.55, 35: 2.96, 36: 3.00,
           37: 0.82, 38: 0.95, 39: 1.22, 40: 1.33, 41: 1.6, 42: 2.16, 43: 1.9, 44: 2.2,
           45: 2.28, 46: 2.20, 47: 1.93, 48: 1.69, 49: 1.78, 50: 1.96, 51: 2.05, 52: 2.1,
           53: 2.66, 54: 2.6}


class CovalentCoordination(nn.Module):
    """(CN_i, EN_i) of every atom, (n_atoms, 2). Args: elements (atomic numbers; H–Xe),
    cutoff (Å)."""

    n_features = 2

    def __init__(self, elements, cutoff: float):
        super().__init__()
        self.elements = sorted(int(z) for z in elements)
        self.cutoff = float(cutoff)
        species = torch.full((119,), -1, dtype=torch.long)
        species[self.elements] = torch.arange(len(self.elements))
        self.register_buffer("species_index", species, persistent=False)
        missing = [chemical_symbols[z] for z in self.elements if z > 54]
        if missing:
            raise ValueError(f"no electronegativity for {missing} (coordination features cover "
                             "H–Xe)")
        self.register_buffer("radii", torch.as_tensor(covalent_radii, dtype=torch.float64),
                             persistent=False)
        chi = torch.full((119,), float("nan"), dtype=torch.float64)
        for z, value in PAULING.items():
            chi[z] = value
        self.register_buffer("chi", chi, persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        i, j = batch[keys.EDGE_INDEX]
        r = edge_vectors(batch).norm(dim=-1)
        numbers = batch[keys.NUMBERS]
        bond = (self.radii[numbers[i]] + self.radii[numbers[j]]).to(r.dtype)
        switch = polynomial_cutoff((r - (self.cutoff - 1.0)).clamp(min=0.0), 1.0)
        count = torch.sigmoid(16.0 * (4.0 / 3.0 * bond / r - 1.0)) * switch
        polarity = (self.chi[numbers[j]] - self.chi[numbers[i]]).nan_to_num(0.0).to(r.dtype)
        return r.new_zeros(len(numbers), 2).index_add(
            0, i, torch.stack([count, polarity * count], dim=1))
