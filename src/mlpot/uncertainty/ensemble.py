"""Deep ensembles: M independently trained potentials that predict together.

After Lakshminarayanan, Pritzel and Blundell, NeurIPS 2017. With E_m, F_m the members'
predictions (same structures, one shared batch and neighbour list):

    Ē = (1/M) Σ_m E_m,           σ_E² = (1/M) Σ_m (E_m − Ē)²            eV
    F̄_iα = (1/M) Σ_m F_m,iα,     σ_F,iα² = (1/M) Σ_m (F_m,iα − F̄_iα)²    eV/Å

σ is the *epistemic* uncertainty: members agree where training data pinned them down and
disagree where it did not. It says nothing of the noise in the labels themselves (aleatoric).
Members with variance heads also predict that noise; the ensemble's aleatoric variance is the
members' mean, and the total predictive variance is σ²_epistemic + σ²_aleatoric (both kept
apart under their own keys).

Recalibration: members of a small ensemble tend to agree too much (or too little), so σ is
mapped by a :class:`~mlpot.uncertainty.calibration.SigmaCalibration` per quantity (a scale, an
exponent, a floor; forces: one σ per atom shared by its components) fitted on validation data
(``calibration.fit_calibration``) and stored with the ensemble; ``energy_std`` / ``forces_std``
are always the recalibrated values.

Saved as a folder: ``ensemble.json`` ({"format": "mlpot-ensemble", "members": [...],
"sigma_scale": {"energy": s_E, "forces": s_F}, "sigma_calibration": {"energy": {...},
"forces": {...}}}) beside one ordinary model folder per member (``member_0/`` …), so loading
never executes code and each member can be used alone. A folder without
"sigma_calibration" (older versions) predicts σ = s × the members' spread per component.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlpot import keys
from mlpot.errors import ModelFileError
from mlpot.potential import Potential
from mlpot.files import atomic_folder, write_json_atomic
from mlpot.serialize import load, read_json_object, save, sigma_scales
from mlpot.uncertainty.calibration import SigmaCalibration, stored_calibrations
from mlpot.uncertainty.stacked import can_stack, stacked_forward
from mlpot.uncertainty.vmapped import (can_vmap, stacked_state, state_key, vmap_pays,
                                      vmapped_forward)

FORMAT = "mlpot-ensemble"


class Ensemble(nn.Module):
    """M potentials (same elements and cutoff) evaluated together.

    ``forward`` returns the members' mean energy, forces (and stress) under the usual keys,
    the epistemic σ under ``keys.ENERGY_STD`` / ``keys.FORCES_STD`` and every member's
    prediction under ``keys.ENERGY_MEMBERS`` / ``keys.FORCES_MEMBERS``. One batch (one
    neighbour list) serves all members. For inference the members are evaluated together:
    Behler–Parrinello members on one descriptor by stacked networks on one descriptor pass
    (:mod:`mlpot.uncertainty.stacked`), message-passing members of one architecture (SchNet,
    PaiNN, equivariant) by ``torch.func.vmap`` over their stacked weights
    (:mod:`mlpot.uncertainty.vmapped`) where that pays (on CPU: small graphs, see
    :func:`~mlpot.uncertainty.vmapped.vmap_pays`). Other members, larger graphs on CPU and
    training (a graph for a loss) run each member's forward and backward pass in turn.
    Members may be of different kinds (:func:`combine_models`: bpnn beside SchNet, PaiNN,
    equivariant); the batch is then built by a member that needs angular triplets, if any.
    """

    def __init__(self, members: list[Potential], sigma_scale_energy: float = 1.0,
                 sigma_scale_forces: float = 1.0,
                 calibration_energy: SigmaCalibration | None = None,
                 calibration_forces: SigmaCalibration | None = None):
        super().__init__()
        self.calibration_energy = calibration_energy or SigmaCalibration(
            float(sigma_scale_energy))
        self.calibration_forces = calibration_forces or SigmaCalibration(
            float(sigma_scale_forces))
        if len(members) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        first = members[0].model
        angular = {member.model.angular_cutoff for member in members} - {None}
        if len(angular) > 1 or any(member.model.elements != first.elements
                                   or member.model.cutoff != first.cutoff
                                   for member in members[1:]):
            raise ValueError("ensemble members must share elements and cutoffs")
        self.members = nn.ModuleList(members)
        # the member whose graph serves all: one that needs angular triplets, if any does
        self._graph_index = next((k for k, m in enumerate(members)
                                  if m.model.angular_cutoff is not None), 0)
        self._vmap_cache = None  # (state_key, stacked_state) of the members' models

    @property
    def sigma_scale_energy(self) -> float:
        """s_E, the scale of the energy σ calibration."""
        return self.calibration_energy.scale

    @property
    def sigma_scale_forces(self) -> float:
        """s_F, the scale of the force σ calibration."""
        return self.calibration_forces.scale

    @property
    def model(self):
        """The model of the member whose graph serves all (elements, cutoffs: what every
        member shares)."""
        return self.members[self._graph_index].model

    @property
    def e0(self) -> torch.Tensor:
        return self.members[0].e0

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def elements(self) -> list[int]:
        return self.members[0].elements

    @property
    def cutoff(self) -> float:
        return self.members[0].cutoff

    def batch(self, frames, dtype=None, graphs=None) -> dict[str, torch.Tensor]:
        return self.members[self._graph_index].batch(frames, dtype=dtype, graphs=graphs)

    def neighbor_list(self, skin: float = 1.0, device=None):
        return self.members[self._graph_index].neighbor_list(skin, device)

    def forward(self, batch: dict[str, torch.Tensor], forces: bool = True, stress: bool = False,
                create_graph: bool | None = None) -> dict[str, torch.Tensor]:
        if create_graph is None:
            create_graph = self.training
        if not create_graph and can_stack(self.members):
            stacked = stacked_forward(self.members, batch, forces=forces, stress=stress)
        elif not create_graph and can_vmap(self.members) and vmap_pays(batch):
            stacked = vmapped_forward(self.members, batch, forces=forces, stress=stress,
                                      state=self._stacked_state())
        else:
            stacked = self._members_in_turn(batch, forces, stress, create_graph)
        energies = stacked[keys.ENERGY]  # (M, B)
        result = {keys.ENERGY: energies.mean(0), keys.ENERGY_MEMBERS: energies,
                  keys.ATOMIC_ENERGY: stacked[keys.ATOMIC_ENERGY].mean(0)}
        result.update(_split_sigma(energies, stacked.get(keys.ENERGY_VAR_ALEATORIC),
                                   self.calibration_energy, "energy"))
        if forces:
            member_forces = stacked[keys.FORCES]  # (M, N, 3)
            result.update({keys.FORCES: member_forces.mean(0), keys.FORCES_MEMBERS: member_forces})
            result.update(_split_sigma(member_forces, stacked.get(keys.FORCES_VAR_ALEATORIC),
                                       self.calibration_forces, "forces", batch[keys.BATCH]))
        if stress:
            result[keys.STRESS] = stacked[keys.STRESS].mean(0)
        return result

    def _stacked_state(self) -> tuple:
        """The members' stacked weights for vmapping, rebuilt only when a weight changed
        (stacking costs about as much as a small molecule's forward pass)."""
        models = [member.model for member in self.members]
        key = state_key(models)
        if self._vmap_cache is None or self._vmap_cache[0] != key:
            self._vmap_cache = (key, stacked_state(models))
        return self._vmap_cache[1]

    def _members_in_turn(self, batch, forces, stress, create_graph) -> dict[str, torch.Tensor]:
        """Each member's forward and backward pass in turn (any model kind; training);
        the outputs stacked as :func:`~mlpot.uncertainty.stacked.stacked_forward` and
        :func:`~mlpot.uncertainty.vmapped.vmapped_forward` do."""
        outs = [member(batch, forces=forces, stress=stress, create_graph=create_graph)
                for member in self.members]
        wanted = [keys.ENERGY, keys.ATOMIC_ENERGY] + [keys.FORCES] * forces + [keys.STRESS] * stress
        return {key: torch.stack([out[key] for out in outs]) for key in wanted + [
            keys.ENERGY_VAR_ALEATORIC, keys.FORCES_VAR_ALEATORIC]
            if all(key in out for out in outs)}


def _split_sigma(values: torch.Tensor, aleatoric_var: torch.Tensor | None,
                 calibration: SigmaCalibration, name: str,
                 structure: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Epistemic σ (spread of ``values`` over members, axis 0; per atom the RMS over x, y, z
    where ``calibration.per_atom``, pooled with its ``structure``'s (atom → structure index)
    by :meth:`~mlpot.uncertainty.calibration.SigmaCalibration.pool`), aleatoric σ (root of the
    members' mean predicted variance
    ``aleatoric_var`` (M, …), if they predict one) and total σ: the total mapped by
    ``calibration``, both parts by the same factor."""
    keys_of = {"energy": (keys.ENERGY_STD, keys.ENERGY_STD_EPISTEMIC, keys.ENERGY_STD_ALEATORIC),
               "forces": (keys.FORCES_STD, keys.FORCES_STD_EPISTEMIC, keys.FORCES_STD_ALEATORIC)}
    total_key, epistemic_key, aleatoric_key = keys_of[name]
    epistemic = values.std(0, correction=0)
    if name == "forces" and calibration.per_atom:
        per_atom = calibration.pool(epistemic.pow(2).mean(-1).sqrt(), structure)
        epistemic = per_atom[:, None].expand_as(epistemic)
    if aleatoric_var is None:
        calibrated = calibration.apply(epistemic)
        return {epistemic_key: calibrated, total_key: calibrated}
    aleatoric_var = aleatoric_var.mean(0)
    if name == "forces":
        aleatoric_var = aleatoric_var[:, None].expand(-1, 3)
    aleatoric_var = aleatoric_var.to(epistemic.dtype)
    total = (epistemic**2 + aleatoric_var).sqrt()
    calibrated = calibration.apply(total)
    factor = calibrated / total.clamp_min(torch.finfo(total.dtype).tiny)
    return {epistemic_key: epistemic * factor, aleatoric_key: aleatoric_var.sqrt() * factor,
            total_key: calibrated}


def save_ensemble(ensemble: Ensemble, path: str | Path, metadata: dict | None = None) -> Path:
    """Save to folder ``path`` atomically: ensemble.json + member_k/ model folders."""
    names = [f"member_{k}" for k in range(len(ensemble.members))]
    with atomic_folder(path) as tmp:
        for name, member in zip(names, ensemble.members):
            save(member, tmp / name, metadata)
        write_json_atomic(tmp / "ensemble.json", {
            "format": FORMAT, "members": names, "metadata": metadata or {},
            "sigma_scale": {"energy": ensemble.sigma_scale_energy,
                            "forces": ensemble.sigma_scale_forces},
            "sigma_calibration": {"energy": ensemble.calibration_energy.to_json(),
                                  "forces": ensemble.calibration_forces.to_json()}})
    return Path(path)


def saved_metadata(path: str | Path) -> dict:
    """The training metadata of a saved model, ensemble or last-layer folder ({} if none)."""
    path = Path(path)
    for name in ("metadata.json", "ensemble.json", "last_layer.json"):
        file = path / name
        if file.exists():
            data = read_json_object(file)
            metadata = data if name == "metadata.json" else data.get("metadata", {})
            if not isinstance(metadata, dict):
                raise ModelFileError(f"{file}: field 'metadata' must be an object, not "
                                     f"{metadata!r}"[:300])
            return metadata
    return {}


def member_folders(path: str | Path, description: dict | None = None) -> list[Path]:
    """The member folders an ensemble folder's ensemble.json lists (checked: a non-empty
    list of folder names inside ``path``); ``description``: that file's content, if read."""
    index = Path(path) / "ensemble.json"
    description = read_json_object(index) if description is None else description
    if description.get("format") != FORMAT:
        raise ModelFileError(f"{index}: format is {description.get('format')!r}, not {FORMAT!r}")
    members = description.get("members")
    if not isinstance(members, list) or not members:
        raise ModelFileError(f"{index}: field 'members' must be a non-empty list of folder "
                             f"names, not {members!r}"[:300])
    for name in members:
        # member folders live inside the ensemble folder
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ModelFileError(f"{index}: field 'members': {name!r} is not a folder name")
    return [Path(path) / name for name in members]


def load_model(path: str | Path):
    """A saved potential, an :class:`Ensemble` if ``path`` holds ensemble.json, or a
    :class:`~mlpot.uncertainty.last_layer.LastLayerUncertainty` if it holds last_layer.json.
    Files are checked field by field (ModelFileError naming file and field); nothing in
    them is executed."""
    path = Path(path)
    index = path / "ensemble.json"
    if (path / "last_layer.json").exists():
        from mlpot.uncertainty.last_layer import load_last_layer

        return load_last_layer(path)
    if not index.exists():
        return load(path)
    description = read_json_object(index)
    members = member_folders(path, description)
    scale = sigma_scales(index, description)
    calibration = stored_calibrations(index, description)
    try:
        return Ensemble([load(folder) for folder in members], scale["energy"],
                        scale["forces"], calibration.get("energy"),
                        calibration.get("forces")).eval()
    except ValueError as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{index}: members do not form an ensemble ({error})") from error


def combine_models(paths: list[str | Path]) -> tuple[Ensemble, dict]:
    """One ensemble from saved models trained apart (any kinds; an ensemble folder gives
    all its members), with the metadata to save it under: the sources, and the Δ-learning
    baseline or dispersion correction if they have one (all must then agree).

    Raises ModelFileError naming the folder that does not fit (last-layer models, other
    elements or cutoff, a different baseline)."""
    members, sources, shared = [], [], {}
    for path in paths:
        model = load_model(path)
        if not isinstance(model, (Ensemble, Potential)):
            raise ModelFileError(f"{path}: a {type(model).__name__}; an ensemble takes "
                                 "plain models or ensembles")
        new = list(model.members) if isinstance(model, Ensemble) else [model]
        if members:
            first, model_0 = members[0].model, new[0].model
            if model_0.elements != first.elements or model_0.cutoff != first.cutoff:
                raise ModelFileError(
                    f"{path}: elements {model_0.elements}, cutoff {model_0.cutoff} Å; "
                    f"{paths[0]}: {first.elements}, {first.cutoff} Å (members share both)")
        metadata = saved_metadata(path)
        for key in ("baseline", "dispersion_correction"):
            if sources and metadata.get(key) != shared.get(key):
                raise ModelFileError(f"{path}: {key} {metadata.get(key)!r} differs from "
                                     f"{paths[0]}'s {shared.get(key)!r}")
            if metadata.get(key) is not None:
                shared[key] = metadata[key]
        members += new
        sources.append(str(Path(path).resolve()))
    try:
        ensemble = Ensemble(members).eval()
    except ValueError as error:
        raise ModelFileError(f"{', '.join(map(str, paths))}: {error}") from error
    return ensemble, {"combined_from": sources, **shared}
