"""London dispersion between atoms whose C6 follow their learned effective volumes.

Tkatchenko–Scheffler-like scaling of free-atom values: a per-element network on radial
symmetry functions (the model's cutoff) predicts each atom's effective volume ratio
v_i = V_eff/V_free (softplus, 1 for an untrained head), and

    α_i = α_free v_i,   C6_ii = C6_free v_i²,   R_i = R_vdW v_i^(1/3),
    C6_ij = 2 C6_ii C6_jj / (α_j/α_i C6_ii + α_i/α_j C6_jj),
    E = −Σ_{i<j} C6_ij / (r_ij⁶ + (a (R_i + R_j))⁶)          (Becke–Johnson damping),

with a learned damping scale a (one number; 0.7 untrained). Energies alone leave the volumes
free to trade against the local model (a C6 3.4× too large came out of the methane dimer), so
training pins them to D4: each atom's C6_ii from dftd4 (charge- and coordination-dependent,
the structure's total charge given) defines v_D4 = (C6_ii^D4 / C6_free)^½, and the loss
penalises log v − log v_D4 with σ ``training.sigma_volume`` (0.1 by default: ±10 %). The
network so learns D4's environment dependence, which gets molecular C6 within a few % of the
dipole-oscillator-strength references, while the energies can still move it. Its inputs are
the covalent coordination number and its electronegativity-weighted twin
(:mod:`mlpot.descriptors.coordination`), and its output layer starts at zero (v = 1, flat):
pinned on the methane dimer alone, ethane, ethylene, acetylene, propane and benzene got C6
within 12 % of the references, where G2 inputs gave −88 to −100 % and a randomly initialised
output layer up to +73 % (benchmarks/RESULTS.md). Free-atom α and C6 (atomic units)
are ASE's table (Chu & Dalgarno 2004, as in Tkatchenko–Scheffler 2009), vdW radii ASE's
(Bondi). Far apart, E → −C6_ij/r⁶ exactly; at contact the damping keeps it finite, and the
local model learns what remains. Molecules: all pairs of a structure. Periodic cells: pairs
up to ``cutoff`` (Å), smoothly switched off over its last ``switch_width`` (Å).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.calculators.vdwcorrection import vdWDB_alphaC6
from ase.data import chemical_symbols, vdw_radii
from ase.units import Bohr, Hartree
from torch.nn import functional

from mlpot import keys
from mlpot.physics.d4 import D4Reference, d4_properties
from mlpot.models.element_head import ElementHead
from mlpot.neighbors import half_neighbor_pairs

_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(x + this) = 1 at x = 0


def free_atom_table(elements) -> dict[str, torch.Tensor]:
    """Free-atom α (bohr³), C6 (eV·Å⁶) and vdW radius (Å), indexed by atomic number."""
    alpha, c6, radius = (torch.zeros(119, dtype=torch.float64) for _ in range(3))
    missing = [chemical_symbols[z] for z in elements
               if chemical_symbols[z] not in vdWDB_alphaC6 or not np.isfinite(vdw_radii[z])]
    if missing:
        raise ValueError(f"no free-atom polarisability/C6/vdW radius for {missing}")
    for z in elements:
        a, c = vdWDB_alphaC6[chemical_symbols[z]]
        alpha[z], c6[z], radius[z] = a, c * Hartree * Bohr**6, vdw_radii[z]
    return {"alpha": alpha, "c6": c6, "radius": radius}


def d4_volume_ratios(numbers, positions, cell, pbc, charge: float) -> np.ndarray:
    """(C6_ii^D4 / C6_free)^½ per atom: D4's atomic C6 (dftd4; charge- and coordination-
    dependent) over the free-atom C6 of :func:`free_atom_table`. Positions and cell in Å."""
    c6_d4 = d4_properties(numbers, positions, cell, pbc, charge)["c6"]  # Hartree·bohr⁶
    return np.sqrt(c6_d4 / _free_c6(numbers))


def _free_c6(numbers) -> np.ndarray:
    """Free-atom C6 (Hartree·bohr⁶) of each atom."""
    return np.array([vdWDB_alphaC6[chemical_symbols[z]][1] for z in numbers])


class Dispersion(torch.nn.Module):
    """Per-atom dispersion energies (eV) from learned effective volumes.

    Args:
        elements: atomic numbers.  cutoff: Å, of the volume network's descriptors.
        pair_cutoff: Å, reach of the pair sum in periodic cells (molecules: all pairs).
        switch_width: Å, over which periodic pairs are switched off before ``pair_cutoff``.
        n_radial, hidden: size of the volume network.
        volume_features: its input, "coordination" (covalent CN: transfers to molecules not
            trained on) or "g2" (radial symmetry functions; model files before version 8).
    """

    def __init__(self, elements, cutoff: float, pair_cutoff: float = 15.0,
                 switch_width: float = 3.0, n_radial: int = 8, hidden: int = 16,
                 volume_features: str = "coordination"):
        super().__init__()
        self.volume_head = ElementHead(elements, cutoff, n_radial=n_radial, hidden=hidden,
                                       n_outputs=1, features=volume_features)
        with torch.no_grad():  # v = 1 with no slope: untrained environments keep trained levels
            for network in self.volume_head.networks.values():
                network[-1].weight.zero_()
                network[-1].bias.zero_()
        self.pair_cutoff, self.switch_width = float(pair_cutoff), float(switch_width)
        for name, table in free_atom_table(self.volume_head.descriptor.elements).items():
            self.register_buffer(f"free_{name}", table, persistent=False)
        self.damping_log_scale = torch.nn.Parameter(torch.tensor(math.log(0.7)))
        self._d4 = D4Reference()  # D4's C6 of the structures seen in training

    def config(self) -> dict:
        head = self.volume_head.config()
        return dict(elements=head["elements"], cutoff=head["cutoff"],
                    pair_cutoff=self.pair_cutoff, switch_width=self.switch_width,
                    n_radial=head["n_radial"], hidden=head["hidden"],
                    volume_features=self.volume_head.features)

    def _apply(self, fn, recurse=True):
        """Free-atom tables stay float64 (they are small; pair terms are cast on use)."""
        result = super()._apply(fn, recurse)
        for name in ("alpha", "c6", "radius"):
            setattr(self, f"free_{name}", getattr(self, f"free_{name}").double())
        return result

    def volume_ratios(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """v_i = V_eff/V_free (n_atoms,), positive."""
        raw = self.volume_head.raw_outputs(batch)[:, 0]
        return functional.softplus(raw + _SOFTPLUS_ONE)

    def pair_c6(self, v: torch.Tensor, numbers: torch.Tensor, i: torch.Tensor,
                j: torch.Tensor) -> torch.Tensor:
        """C6_ij (eV·Å⁶) of atom pairs (i, j) from volume ratios ``v`` (TS combination)."""
        alpha = self.free_alpha.to(v.dtype)[numbers] * v
        c6 = self.free_c6.to(v.dtype)[numbers] * v**2
        return 2 * c6[i] * c6[j] / (alpha[j] / alpha[i] * c6[i] + alpha[i] / alpha[j] * c6[j])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``"atomic"`` dispersion energies (n_atoms,) eV, ``"volume_ratios"`` (n_atoms,);
        in training also ``keys.VOLUME_DEVIATION``, log v − log v_D4 (n_atoms,)."""
        v = self.volume_ratios(batch)
        dtype, numbers = v.dtype, batch[keys.NUMBERS]
        radius = self.free_radius.to(dtype)[numbers] * v ** (1 / 3)
        i, j, vectors, weight = self._pairs(batch)
        distance2 = (vectors**2).sum(1)
        c6_ij = self.pair_c6(v, numbers, i, j)
        damping = (self.damping_log_scale.exp().to(dtype) * (radius[i] + radius[j])) ** 6
        pair = -c6_ij / (distance2**3 + damping) * weight
        atomic = v.new_zeros(len(v)).index_add(0, i, 0.5 * pair).index_add(0, j, 0.5 * pair)
        out = {"atomic": atomic, "volume_ratios": v}
        if self.training:
            pinned = torch.as_tensor(self.pinned_volume_ratios(batch), dtype=dtype,
                                     device=v.device)
            out[keys.VOLUME_DEVIATION] = torch.log(v) - torch.log(pinned)
        return out

    def pinned_volume_ratios(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """v_D4 = (C6_ii^D4 / C6_free)^½ of every atom (n_atoms,), from dftd4 (each
        structure computed once)."""
        c6_d4 = self._d4(batch, "c6")
        return np.sqrt(c6_d4 / _free_c6(batch[keys.NUMBERS].cpu().numpy()))

    def _pairs(self, batch):
        """(i, j, r_j + S·cell − r_i, weight) over each pair once: all pairs of every
        molecule, and the pairs of periodic cells within ``pair_cutoff`` (image shift S) with
        their switching weight."""
        positions, cell, pbc = batch[keys.POSITIONS], batch[keys.CELL], batch[keys.PBC]
        n_atoms = batch[keys.N_ATOMS].tolist()
        offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
        i_all, j_all, shift_all = [], [], []
        for b, (offset, n) in enumerate(zip(offsets, n_atoms)):
            if bool(pbc[b].any()):
                if not bool(pbc[b].all()):
                    raise ValueError("Dispersion: cells must be periodic in all directions "
                                     "or none")
                i, j, shifts = half_neighbor_pairs(
                    positions[offset:offset + n].detach().cpu().numpy(),
                    cell[b].detach().cpu().numpy(), self.pair_cutoff)
            else:
                i, j = np.triu_indices(n, 1)
                shifts = np.zeros((len(i), 3))
            i_all.append(i + offset)
            j_all.append(j + offset)
            shift_all.append(shifts)
        device = positions.device
        i = torch.as_tensor(np.concatenate(i_all), dtype=torch.long, device=device)
        j = torch.as_tensor(np.concatenate(j_all), dtype=torch.long, device=device)
        shifts = torch.as_tensor(np.concatenate(shift_all), dtype=positions.dtype, device=device)
        owner = batch[keys.BATCH][i]
        vectors = positions[j] + torch.einsum("pa,pab->pb", shifts, cell[owner]) - positions[i]
        periodic = pbc.all(1)[owner]
        distance = vectors.norm(dim=1)
        start = self.pair_cutoff - self.switch_width
        x = ((distance - start) / self.switch_width).clamp(0, 1)
        switch = 1 - x**3 * (10 - 15 * x + 6 * x**2)  # C² smoothstep from 1 to 0
        weight = torch.where(periodic, switch, torch.ones_like(switch))
        return i, j, vectors, weight
