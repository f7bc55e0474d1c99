"""ASE calculator for a saved or in-memory mlpot potential (after ase/calculators/lj.py)."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlpot import keys
from mlpot.data.records import frame_from_atoms


class MlpotCalculator(Calculator):
    """Energy, free energy, forces and (for periodic cells) stress from an mlpot potential.

    With an ensemble (:class:`~mlpot.uncertainty.ensemble.Ensemble`) the results are the
    members' means, and ``energy_std`` (eV) and ``forces_std`` (n_atoms, 3; eV/Å) hold the
    total σ, split into ``…_epistemic`` and (with variance heads) ``…_aleatoric``; a single
    model with a variance head gives the aleatoric σ alone.

    Args:
        model: path of a saved model or ensemble folder, a Potential or an Ensemble.
        dtype: "float64" (default, for MD energy conservation) or "float32".
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "energy_std", "forces_std"]

    def __init__(self, model, dtype: str = "float64", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            from mlpot.uncertainty.ensemble import load_model

            model = load_model(model)
        self.potential = model.to(getattr(torch, dtype)).eval()
        self.dtype = getattr(torch, dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        frame = frame_from_atoms(self.atoms, source="<atoms>", index=0)
        frame.energy = frame.forces = frame.stress = None
        batch = self.potential.batch([frame], dtype=self.dtype)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.potential(batch, forces=True, stress=want_stress, create_graph=False)
        energy = float(out[keys.ENERGY][0].detach())
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["energies"] = out[keys.ATOMIC_ENERGY].detach().numpy().astype(np.float64)
        self.results["forces"] = out[keys.FORCES].detach().numpy().astype(np.float64)
        for key in (keys.ENERGY_STD, keys.ENERGY_STD_EPISTEMIC, keys.ENERGY_STD_ALEATORIC):
            if key in out:
                self.results[key] = float(out[key][0].detach())
        for key in (keys.FORCES_STD, keys.FORCES_STD_EPISTEMIC, keys.FORCES_STD_ALEATORIC):
            if key in out:
                self.results[key] = out[key].detach().numpy().astype(np.float64)
        if want_stress:
            stress = out[keys.STRESS][0].detach().numpy().astype(np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell periodic in all directions")
