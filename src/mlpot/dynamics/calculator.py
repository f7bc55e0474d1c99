"""ASE calculator for a saved or in-memory mlpot potential (after ase/calculators/lj.py)."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlpot import keys
from mlpot.data.batch import pick_device, to_device
from mlpot.data.records import frame_from_atoms


def _checked_correction(recorded, model_path):
    """The dispersion correction a model folder's metadata records (None if none), checked."""
    from mlpot.errors import ModelFileError

    if recorded is None:
        return None
    from mlpot.physics.correction import KINDS

    if (not isinstance(recorded, dict) or recorded.get("kind") not in KINDS
            or not isinstance(recorded.get("functional"), str)):
        raise ModelFileError(f"{model_path}: metadata field 'dispersion_correction' must be "
                             f"{{'kind': one of {KINDS}, 'functional': name}}, not "
                             f"{recorded!r}"[:300])
    return recorded


class MlpotCalculator(Calculator):
    """Energy, free energy, forces and (for periodic cells) stress from an mlpot potential.

    With an ensemble (:class:`~mlpot.uncertainty.ensemble.Ensemble`) the results are the
    members' means, and ``energy_std`` (eV) and ``forces_std`` (n_atoms, 3; eV/Å) hold the
    total σ, split into ``…_epistemic`` and (with variance heads) ``…_aleatoric``; a single
    model with a variance head gives the aleatoric σ alone.

    With long-range electrostatics the results also hold ``charges`` (e), ``dipole`` (e·Å,
    molecules); with long-range terms ``energy_terms`` ({"short": …, "coulomb": …,
    "dispersion": …}, eV, those present; "short" includes E0).

    A Δ-model (trained on differences to a baseline level, see :mod:`mlpot.label.delta`)
    adds its baseline engine's energy and forces (the engine runs on every call; per-atom
    energies and stress are then not available).

    A model of dispersion-free DFT labels with a recorded standard correction (DFT-D3/D4,
    see :mod:`mlpot.physics.correction`) gets the correction's energy, forces and stress
    added; ``energy_terms["dispersion"]`` holds its energy.

    Args:
        model: path of a saved model or ensemble folder, a Potential or an Ensemble.
        dtype: "float64" (default, for MD energy conservation) or "float32".
        device: "cpu" (default), "cuda" (or "cuda:N") or "auto" (CUDA when a GPU is
            present): where the model runs; the neighbour list is built on the CPU.
        baseline: engine whose energy and forces are added (default: the one a Δ-model
            folder records, else none).
        correction: dispersion correction description ({"kind": "d3", "functional": "pbe"})
            whose results are added (default: the one the model folder records, else none).
        skin: Å; the neighbour list holds pairs within cutoff + skin and is searched again
            only when an atom has moved more than skin/2 (0: search at every call).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "energy_std", "forces_std", "charges", "dipole"]

    def __init__(self, model, dtype: str = "float64", baseline=None, correction=None,
                 skin: float = 1.0, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            from mlpot.label.delta import baseline_engine
            from mlpot.uncertainty.ensemble import load_model, saved_metadata

            baseline = baseline or baseline_engine(model)
            recorded = saved_metadata(model).get("dispersion_correction")
            correction = correction or _checked_correction(recorded, model)
            model = load_model(model)
        self.baseline = baseline
        self.correction = None
        if correction is not None:
            from mlpot.physics.correction import correction_calculator

            self.correction = correction_calculator(correction)
        self.device = pick_device(device, "the calculator's device")
        self.potential = model.to(device=self.device, dtype=getattr(torch, dtype)).eval()
        self.dtype = getattr(torch, dtype)
        # the graph is filtered on the model's device, so only positions travel each step
        self.neighbors = self.potential.neighbor_list(skin, self.device) if skin > 0 else None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        frame = frame_from_atoms(self.atoms, source="<atoms>", index=0)
        frame.energy = frame.forces = frame.stress = None
        graphs = None
        if self.neighbors is not None:
            graphs = [self.neighbors(frame.positions, frame.cell, frame.pbc, frame.numbers)]
        batch = to_device(self.potential.batch([frame], dtype=self.dtype, graphs=graphs),
                          self.device)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.potential(batch, forces=True, stress=want_stress, create_graph=False)
        out = {key: value.detach().cpu() if torch.is_tensor(value) else value
               for key, value in out.items()}
        energy = float(out[keys.ENERGY][0])
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["energies"] = out[keys.ATOMIC_ENERGY].numpy().astype(np.float64)
        self.results["forces"] = out[keys.FORCES].numpy().astype(np.float64)
        if keys.CHARGES in out:  # a model with long-range electrostatics
            self.results["charges"] = out[keys.CHARGES].numpy().astype(np.float64)
            self.results["dipole"] = out[keys.DIPOLE][0].numpy().astype(np.float64)
        terms = {name: float(out[key][0]) for name, key in
                 (("coulomb", keys.ENERGY_COULOMB), ("dispersion", keys.ENERGY_DISPERSION))
                 if key in out}
        if terms:  # the energy split of a model with long-range terms
            self.results["energy_terms"] = {"short": energy - sum(terms.values()), **terms}
        for key in (keys.ENERGY_STD, keys.ENERGY_STD_EPISTEMIC, keys.ENERGY_STD_ALEATORIC):
            if key in out:
                self.results[key] = float(out[key][0])
        for key in (keys.FORCES_STD, keys.FORCES_STD_EPISTEMIC, keys.FORCES_STD_ALEATORIC):
            if key in out:
                self.results[key] = out[key].numpy().astype(np.float64)
        if self.baseline is not None:
            self._add_baseline(want_stress)
        if want_stress:
            stress = out[keys.STRESS][0].numpy().astype(np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell periodic in all directions")
        if self.correction is not None:
            self._add_correction(want_stress)

    def _add_correction(self, want_stress: bool) -> None:
        """E, F (and σ) plus the standard dispersion correction's."""
        atoms = self.atoms.copy()
        atoms.calc = self.correction
        energy = atoms.get_potential_energy()
        self.results["energy"] += energy
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = self.results["forces"] + atoms.get_forces()
        if want_stress:
            self.results["stress"] = self.results["stress"] + atoms.get_stress()
        self.results.pop("energies", None)  # the libraries give no per-atom split here
        terms = self.results.setdefault("energy_terms", {"short": self.results["energy"]
                                                         - energy})
        terms["dispersion"] = energy

    def _add_baseline(self, want_stress: bool) -> None:
        """E = E_baseline + ΔE, F = F_baseline + ΔF (Δ-models)."""
        from ase.calculators.calculator import CalculationFailed, PropertyNotImplementedError

        if want_stress:
            raise PropertyNotImplementedError("a Δ-model's baseline gives no stress")
        label = self.baseline.label(self.atoms)
        if label.failed or label.forces is None:
            raise CalculationFailed(f"baseline {self.baseline.level}: "
                                    f"{label.error or 'no forces'}")
        self.results["energy"] += label.energy
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = self.results["forces"] + label.forces
        self.results.pop("energies", None)  # the baseline has no per-atom split
