"""Potential: E = Σ_i E0(Z_i) + Σ_i E_i(model) [+ E_coulomb + E_dispersion]; forces and stress by autograd, in one place.

F = −∂E/∂r and σ = (1/V) ∂E/∂ε (ASE's sign convention), where ε is a symmetric strain applied
to positions and cell together. No model predicts forces or stress directly.

With a variance head (:class:`mlpot.models.variance.VarianceHead`) the output also holds the
aleatoric variances: of each total energy, Σ_i v^E_i (eV²), and of each atom's force
components, v^F_i (eV²/Å²).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.records import Frame, check_elements
from mlpot.neighbors import SkinNeighborList, graph_arrays


class Potential(nn.Module):
    """A model of per-atom energies plus per-element reference energies E0 (eV).

    Args:
        model: module mapping a batch to ``{"atomic_energy": (n_atoms,)}``, with
            ``elements``, ``cutoff`` and ``angular_cutoff`` attributes.
        reference_energies: E0 by chemical symbol, eV (``{"H": -13.57, ...}``).
        variance_head: optional aleatoric variance head (same elements, cutoff ≤ the model's).
        long_range: optional :class:`~mlpot.physics.electrostatics.Electrostatics`: learned
            charges whose Coulomb energy adds to the model's (a sibling term).
        dispersion: optional :class:`~mlpot.physics.dispersion.Dispersion`: damped C6/r⁶
            between atoms of learned effective volumes (a sibling term).
    """

    def __init__(self, model: nn.Module, reference_energies: dict[str, float],
                 variance_head: nn.Module | None = None, long_range: nn.Module | None = None,
                 dispersion: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.variance_head = variance_head
        self.long_range = long_range
        self.dispersion = dispersion
        missing = [chemical_symbols[z] for z in model.elements
                   if chemical_symbols[z] not in reference_energies]
        if missing:
            raise ValueError(f"reference energies missing for {missing}")
        self.reference_energies = {s: float(e) for s, e in reference_energies.items()
                                   if atomic_numbers[s] in model.elements}
        self.register_buffer("e0", self._e0_table(torch.device("cpu")), persistent=False)

    def _e0_table(self, device: torch.device) -> torch.Tensor:
        """E0 indexed by atomic number, (119,) float64 eV."""
        e0 = torch.zeros(119, dtype=torch.float64)
        for symbol, value in self.reference_energies.items():
            e0[atomic_numbers[symbol]] = value
        return e0.to(device)

    def _apply(self, fn, recurse=True):
        """``.to(float32)`` and friends convert buffers; E0 (~1e3 eV) stays float64 so that
        float32 models keep meV resolution in total energies."""
        result = super()._apply(fn, recurse)
        self.e0 = self._e0_table(self.e0.device)
        return result

    @property
    def physics_terms(self) -> list[nn.Module]:
        """The long-range sibling terms present (electrostatics, dispersion)."""
        return [term for term in (self.long_range, self.dispersion) if term is not None]

    @property
    def elements(self) -> list[int]:
        return self.model.elements

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def graph(self, frame: Frame) -> dict[str, np.ndarray]:
        """Neighbour graph of one frame at this potential's cutoffs."""
        return graph_arrays(frame.positions, frame.cell, frame.pbc, self.model.cutoff,
                            self.model.angular_cutoff)

    def neighbor_list(self, skin: float = 1.0, device=None) -> SkinNeighborList:
        """A neighbour list at this potential's cutoffs that is searched again only when
        atoms moved more than ``skin``/2 Å (for MD); graphs as tensors on ``device`` if
        given (see :class:`~mlpot.neighbors.SkinNeighborList`)."""
        return SkinNeighborList(self.model.cutoff, self.model.angular_cutoff, skin, device)

    def batch(self, frames: list[Frame], dtype=None, graphs=None) -> dict[str, torch.Tensor]:
        """Collate frames (checking their elements) into a batch for this potential;
        ``graphs``: their neighbour graphs if already known (else searched here)."""
        check_elements(frames, self.elements)
        dtype = dtype or self.dtype
        graphs = graphs if graphs is not None else [self.graph(f) for f in frames]
        return collate(frames, graphs, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        parameter = next(self.parameters(), None)
        return parameter.dtype if parameter is not None else torch.float64

    def aleatoric(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The variance head's outputs (nothing without a head): energy variances
        (n_structures,) eV² and per-atom force variances (n_atoms,) eV²/Å², and their roots
        as σ (the force σ per component, (n_atoms, 3))."""
        if self.variance_head is None:
            return {}
        energy_var, force_var = self.variance_head(batch)
        n_structures = batch[keys.CELL].shape[0]
        energy_var = energy_var.double().new_zeros(n_structures).index_add(
            0, batch[keys.BATCH], energy_var.double())
        energy_std, force_std = energy_var.sqrt(), force_var.sqrt()[:, None].expand(-1, 3)
        return {keys.ENERGY_VAR_ALEATORIC: energy_var, keys.FORCES_VAR_ALEATORIC: force_var,
                keys.ENERGY_STD: energy_std, keys.ENERGY_STD_ALEATORIC: energy_std,
                keys.FORCES_STD: force_std, keys.FORCES_STD_ALEATORIC: force_std}

    def forward(self, batch: dict[str, torch.Tensor], forces: bool = True, stress: bool = False,
                create_graph: bool | None = None) -> dict[str, torch.Tensor]:
        """Energies (n_structures,) eV, always float64; forces (n_atoms, 3) eV/Å and stress
        (n_structures, 3, 3) eV/Å³ in the model's dtype.

        ``create_graph`` (default: when training) keeps the graph for a loss on forces.
        """
        if create_graph is None:
            create_graph = self.training
        batch, positions, strain = attach_strain(batch, forces, stress)
        n_structures = batch[keys.CELL].shape[0]
        atomic = self.model(batch)[keys.ATOMIC_ENERGY]
        long_range = self.long_range(batch) if self.long_range is not None else None
        dispersion = self.dispersion(batch) if self.dispersion is not None else None
        for term in (long_range, dispersion):
            if term is not None:
                atomic = atomic + term["atomic"].to(atomic.dtype)
        # E0 (~1e3 eV per atom) is added in float64 so float32 models keep meV resolution
        atomic = atomic.double() + self.e0[batch[keys.NUMBERS]]
        energy = atomic.new_zeros(n_structures).index_add(0, batch[keys.BATCH], atomic)
        out = {keys.ENERGY: energy, keys.ATOMIC_ENERGY: atomic}

        def structure_sum(per_atom: torch.Tensor) -> torch.Tensor:
            return atomic.new_zeros(n_structures).index_add(0, batch[keys.BATCH],
                                                            per_atom.double())

        if long_range is not None:
            out[keys.ENERGY_COULOMB] = structure_sum(long_range["atomic"])
            for key in (keys.CHARGES, keys.DIPOLE, keys.CHARGE_EXCESS):
                out[key] = long_range[key]
            if keys.CHARGE_EEQ_DEVIATION in long_range:
                out[keys.CHARGE_EEQ_DEVIATION] = long_range[keys.CHARGE_EEQ_DEVIATION]
        if dispersion is not None:
            out[keys.ENERGY_DISPERSION] = structure_sum(dispersion["atomic"])
            out[keys.VOLUME_RATIOS] = dispersion["volume_ratios"]
            if keys.VOLUME_DEVIATION in dispersion:
                out[keys.VOLUME_DEVIATION] = dispersion[keys.VOLUME_DEVIATION]
        out.update(self.aleatoric(batch))
        if forces or stress:
            inputs = [positions] + ([strain] if stress else [])
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph,
                                        allow_unused=True)
            out.update(derivatives(grads, positions, strain, batch, forces))
        return out


def attach_strain(batch: dict[str, torch.Tensor], forces: bool, stress: bool):
    """(batch, positions, strain): a copy of ``batch`` whose positions require grad (for
    forces or stress) and, for stress, carry a zero symmetric strain ε (n_structures, 3, 3)
    applied to positions and cell alike, so that σ = (1/V) ∂E/∂ε. ``strain`` is None without
    stress."""
    batch = dict(batch)
    positions = batch[keys.POSITIONS]
    strain = None
    if forces or stress:
        positions = positions.detach().requires_grad_(True)
        batch[keys.POSITIONS] = positions
    if stress:
        n_structures = batch[keys.CELL].shape[0]
        strain = torch.zeros(n_structures, 3, 3, dtype=positions.dtype,
                             device=positions.device, requires_grad=True)
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        batch[keys.POSITIONS] = positions + torch.einsum(
            "na,nab->nb", positions, symmetric[batch[keys.BATCH]])
        batch[keys.CELL] = batch[keys.CELL] + batch[keys.CELL] @ symmetric
    return batch, positions, strain


def derivatives(grads, positions: torch.Tensor, strain: torch.Tensor | None,
                batch: dict[str, torch.Tensor], forces: bool) -> dict[str, torch.Tensor]:
    """Forces −∂E/∂r (eV/Å) and, if ``strain`` is given, stress (1/V) ∂E/∂ε (eV/Å³) from
    ``grads`` = ∂E/∂(positions[, strain]); grads may carry a leading axis of several
    energies (one per ensemble member or head), which the results keep."""
    out = {}
    if forces:
        out[keys.FORCES] = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
    if strain is not None:
        volume = torch.linalg.det(batch[keys.CELL].detach()).abs()
        d_strain = grads[1] if grads[1] is not None else torch.zeros_like(strain)
        out[keys.STRESS] = d_strain / volume[:, None, None]
    return out
