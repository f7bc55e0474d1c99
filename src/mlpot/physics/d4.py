"""D4's per-atom reference properties (dftd4): what training pins learned volumes and charges to.

Energies and forces alone leave the long-range terms' per-atom quantities nearly free to trade
against the local model (a methane C6 3.4× too large; a water dipole of 0.14 e·Å where B3LYP
gives 0.43). D4 (Caldeweyher et al., J. Chem. Phys. 150, 154122 (2019)) gives, from the
geometry and the total charge alone, each atom's C6_ii (charge- and coordination-dependent)
and its EEQ partial charge (electronegativity equilibration): no reference calculation needed,
every element to Rn, molecules and periodic cells. The loss holds the learned quantities near
them with a width (``training.sigma_volume``, ``training.sigma_charge_eeq``) that the energies
can still overrule.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.units import Bohr

from mlpot import keys


def d4_properties(numbers, positions, cell, pbc, charge: float) -> dict[str, np.ndarray]:
    """{"c6": C6_ii (Hartree·bohr⁶), "charges": EEQ partial charges (e)} per atom, from
    dftd4. Positions and cell in Å; ``charge``: the structure's total charge (e)."""
    try:
        from dftd4.interface import DispersionModel
    except ImportError as error:
        raise ImportError("learned long-range terms train against D4: pip install dftd4") \
            from error
    periodic = np.asarray(pbc, dtype=bool)
    model = DispersionModel(np.asarray(numbers), np.asarray(positions) / Bohr,
                            charge=float(charge),
                            lattice=np.asarray(cell) / Bohr if periodic.any() else None,
                            periodic=periodic if periodic.any() else None)
    properties = model.get_properties()
    return {"c6": np.diag(properties["c6 coefficients"]).copy(),
            "charges": np.asarray(properties["partial charges"], dtype=np.float64)}


class D4Reference:
    """D4's per-atom properties of a batch's structures (:func:`d4_properties`), each structure
    computed once and kept by its numbers, positions, cell, pbc and charge (training revisits
    the same structures every epoch)."""

    def __init__(self):
        self._seen: dict[bytes, dict[str, np.ndarray]] = {}

    def __call__(self, batch: dict[str, torch.Tensor], name: str) -> np.ndarray:
        """(n_atoms,) property ``name`` ("c6" or "charges") of every atom of ``batch``."""
        numbers = batch[keys.NUMBERS].cpu().numpy()
        positions = batch[keys.POSITIONS].detach().cpu().numpy().astype(np.float64)
        cells = batch[keys.CELL].detach().cpu().numpy().astype(np.float64)
        pbc = batch[keys.PBC].cpu().numpy()
        charges = batch.get(keys.CHARGE)
        charges = (np.zeros(len(cells)) if charges is None
                   else charges.detach().cpu().numpy().astype(np.float64))
        ends = np.cumsum(batch[keys.N_ATOMS].cpu().numpy())
        values = []
        for b, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
            key = b"".join(np.ascontiguousarray(a).tobytes() for a in (
                numbers[start:end], positions[start:end], cells[b], pbc[b], charges[b]))
            if key not in self._seen:
                self._seen[key] = d4_properties(numbers[start:end], positions[start:end],
                                                cells[b], pbc[b], charges[b])
            values.append(self._seen[key][name])
        return np.concatenate(values)
