"""Last-layer uncertainty of one trained Behler–Parrinello model (LLPR), at near its own cost.

The model's energy is linear in its last-layer weights w (one vector per element network,
concatenated to P numbers): with h_Z the element network up to its last layer, s the output
scale and x⁰ the descriptor of a free atom,

    E = Σ_i b_Z c_i + w · φ,    φ = Σ_i φ_i,    φ_i = s [h_Z(x_i) − h_Z(x⁰_Z)]   (block Z).

Treating w as the only uncertain parameters of a Gaussian likelihood with the loss's noise
levels (σ_E per atom for energies, σ_F per force component) gives the Gauss–Newton precision
of the last layer on the training set and the covariance (Bigi, Chong, Ceriotti, Grasselli,
Mach. Learn.: Sci. Technol. 5, 045018 (2024), "last-layer prediction rigidity"):

    Λ = Σ_S [ φ_S φ_Sᵀ / (N_S σ_E)² + Σ_jα ∂φ_S/∂r_jα ∂φ_S/∂r_jαᵀ / σ_F² ],
    C = (Λ + ς² I)⁻¹,       σ_E²(S) = α_E² φ_Sᵀ C φ_S                                  (eV²).

Forces: ``force_sigma="local"`` (default, no extra backward pass) gives each atom the
isotropic σ_F,i = α_F √(φ_iᵀ C φ_i), the uncertainty of its local energy (Chong et al.,
J. Chem. Theory Comput. 2024, "local prediction rigidity"), which tracks how unfamiliar that
atom's environment is; ``force_sigma="heads"`` samples K last layers w_k ~ N(w, C) and takes
the spread of their forces (one batched backward of K cotangents; exact as K → ∞).

ς² (the prior precision) is chosen on validation energies by Gaussian NLL; α_E, α_F are the
maximum-likelihood scales of the epistemic σ to the validation errors (the LLPR recipe).
The σ are epistemic: they depend on where the training structures lie in feature space, not
on label noise. With a variance head the aleatoric σ is the head's and the total is
√(epistemic² + aleatoric²); since α was fitted to the whole error, that total is conservative
(wider than calibrated) in distribution. The mean prediction is the model's own.

Saved as a folder: ``last_layer.json`` + ``last_layer.safetensors`` (C and the sampled head
offsets) beside ``model/`` (the ordinary model folder).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from mlpot import keys
from mlpot.data.batch import structure_jacobian
from mlpot.data.records import Frame
from mlpot.errors import ModelFileError
from mlpot.models.bpnn import BehlerParrinello
from mlpot.potential import Potential, attach_strain, derivatives
from mlpot.files import atomic_folder, write_bytes_atomic, write_json_atomic
from mlpot.progress import bar as tqdm
from mlpot.serialize import (CHECKSUM, check_checksum, check_finite, check_safetensors,
                             finite_number, load, read_header, read_json_object, save, sha256,
                             sigma_scales)
from mlpot.uncertainty.calibration import (SigmaCalibration, fit_calibration, fit_sigma_scale,
                                           gaussian_nll, stored_calibrations)

FORMAT = "mlpot-last-layer"
FORCE_SIGMA = ("local", "heads")


def last_layer_weights(model: BehlerParrinello) -> torch.Tensor:
    """w: every element network's last-layer weights, concatenated (P,)."""
    return torch.cat([model.networks[chemical_symbols[z]][-1].weight.reshape(-1)
                      for z in model.descriptor.elements])


def last_layer_features(model: BehlerParrinello, batch: dict[str, torch.Tensor]):
    """(φ_i (n_atoms, P), c_i (n_atoms,), element index (n_atoms,)): per-atom last-layer
    features in their element's block (zeros elsewhere) and the baseline's coordination,
    so that the model's atomic energies are b[index] c + φ·w (eV)."""
    features = model.descriptor(batch)
    species = model.descriptor.species_index[batch[keys.NUMBERS]]
    dtype = features.dtype
    mean, std = model.feature_mean.to(dtype), model.feature_std.to(dtype)
    start = 0
    phi = features.new_zeros(len(species), last_layer_weights(model).numel())
    for e, z in enumerate(model.descriptor.elements):
        network = model.networks[chemical_symbols[z]]
        width = network[-1].in_features
        atoms = torch.nonzero(species == e).squeeze(1)
        if len(atoms):
            x = (features[atoms] - mean[e]) / std[e]
            x0 = (-mean[e] / std[e]).unsqueeze(0)
            hidden = network[:-1](torch.cat([x, x0]))
            block = (hidden[:-1] - hidden[-1:]) * model.energy_scale.to(dtype)
            columns = torch.arange(start, start + width, device=phi.device)
            phi = phi.index_put((atoms[:, None], columns[None, :]), block)
        start += width
    return phi, model.coordination(batch), species


class LastLayerUncertainty(nn.Module):
    """A Behler–Parrinello potential with last-layer (LLPR) epistemic σ.

    Outputs the potential's own energies, forces and stress, plus ``keys.ENERGY_STD_EPISTEMIC``
    and ``keys.FORCES_STD_EPISTEMIC`` (and, with a variance head, the aleatoric parts and
    totals as :class:`~mlpot.uncertainty.ensemble.Ensemble` does).

    Args:
        potential: a Potential whose model is a BehlerParrinello.
        covariance: C (P, P), unscaled, float64.
        head_offsets: (K, P) samples of N(0, C) for ``force_sigma="heads"`` (may be empty).
        sigma_scale_energy, sigma_scale_forces: α_E, α_F.  prior: ς² (a record).
        force_sigma: "local" or "heads".
        calibration_forces: the map of the raw force σ (default: × α_F per component),
            fitted by :func:`~mlpot.uncertainty.calibration.fit_calibration`.
    """

    def __init__(self, potential: Potential, covariance: torch.Tensor,
                 head_offsets: torch.Tensor, sigma_scale_energy: float = 1.0,
                 sigma_scale_forces: float = 1.0, prior: float = 0.0,
                 force_sigma: str = "local",
                 calibration_forces: SigmaCalibration | None = None):
        super().__init__()
        if type(potential.model) is not BehlerParrinello or potential.physics_terms:
            raise ValueError("last-layer uncertainty needs a Behler–Parrinello model without "
                             f"long-range terms (this one is {potential.model.kind!r}); use an "
                             "ensemble")
        if force_sigma not in FORCE_SIGMA:
            raise ValueError(f"force_sigma must be one of {FORCE_SIGMA}, not {force_sigma!r}")
        if force_sigma == "heads" and len(head_offsets) < 2:
            raise ValueError("force_sigma='heads' needs at least 2 sampled heads")
        self.potential = potential
        self.register_buffer("covariance", covariance.double())
        self.register_buffer("head_offsets", head_offsets.double())
        self.sigma_scale_energy = float(sigma_scale_energy)
        self.calibration_forces = calibration_forces or SigmaCalibration(
            float(sigma_scale_forces))
        self.prior = float(prior)
        self.force_sigma = force_sigma

    @property
    def sigma_scale_forces(self) -> float:
        """α_F, the scale of the force σ calibration."""
        return self.calibration_forces.scale

    def _apply(self, fn, recurse=True):
        """C and the head offsets stay float64 whatever dtype the model is moved to."""
        covariance, offsets = self.covariance, self.head_offsets
        result = super()._apply(fn, recurse)
        device = self.potential.e0.device
        self.covariance = covariance.to(device)
        self.head_offsets = offsets.to(device)
        return result

    model = property(lambda self: self.potential.model)
    e0 = property(lambda self: self.potential.e0)
    dtype = property(lambda self: self.potential.dtype)
    elements = property(lambda self: self.potential.elements)
    cutoff = property(lambda self: self.potential.cutoff)

    def batch(self, frames, dtype=None, graphs=None) -> dict[str, torch.Tensor]:
        return self.potential.batch(frames, dtype=dtype, graphs=graphs)

    def neighbor_list(self, skin: float = 1.0, device=None):
        return self.potential.neighbor_list(skin, device)

    def forward(self, batch: dict[str, torch.Tensor], forces: bool = True, stress: bool = False,
                create_graph: bool | None = None) -> dict[str, torch.Tensor]:
        if create_graph:
            raise ValueError("last-layer uncertainty is for inference; train the potential")
        model = self.model
        batch, positions, strain = attach_strain(batch, forces, stress)
        with torch.set_grad_enabled(forces or stress):
            phi, coordination, species = last_layer_features(model, batch)
            weights = last_layer_weights(model).to(phi.dtype)
            baseline = model.coordination_energy.to(phi.dtype)[species]
            atomic = baseline * coordination + phi @ weights
        atomic = atomic.double() + self.e0[batch[keys.NUMBERS]]
        n_structures = batch[keys.CELL].shape[0]
        energy = atomic.new_zeros(n_structures).index_add(0, batch[keys.BATCH], atomic)
        out = {keys.ENERGY: energy.detach(), keys.ATOMIC_ENERGY: atomic.detach()}
        phi64 = phi.detach().double()
        phi_total = phi64.new_zeros(n_structures, phi.shape[1]).index_add(
            0, batch[keys.BATCH], phi64)
        energy_var = torch.einsum("bp,pq,bq->b", phi_total, self.covariance, phi_total)
        out[keys.ENERGY_STD_EPISTEMIC] = energy_var.clamp_min(0).sqrt() * self.sigma_scale_energy
        if forces or stress:
            heads = self.head_offsets.to(phi.dtype) if self.force_sigma == "heads" else None
            cotangent_phi = weights.expand(1, *phi.shape)
            cotangent_c = baseline.expand(1, *coordination.shape)
            if heads is not None:  # head k's energy differs from the mean by offset_k · φ
                cotangent_phi = torch.cat([cotangent_phi, heads[:, None].expand(
                    -1, len(phi), -1)])
                cotangent_c = torch.cat([cotangent_c, coordination.new_zeros(
                    len(heads), len(coordination))])
            inputs = [positions] + ([strain] if stress else [])
            grads = torch.autograd.grad((phi, coordination), inputs,
                                        grad_outputs=(cotangent_phi, cotangent_c),
                                        is_grads_batched=True, allow_unused=True)
            derived = derivatives(grads, positions, strain, batch, forces)
            for key, value in derived.items():
                out[key] = value[0].detach()
            if forces and heads is not None:
                spread = derived[keys.FORCES][1:].detach().double().pow(2).mean(0).sqrt()
                if self.calibration_forces.per_atom:  # one σ per atom: RMS over x, y, z
                    spread = self.calibration_forces.pool(spread.pow(2).mean(-1).sqrt(),
                                                          batch[keys.BATCH])
                    spread = spread[:, None].expand(-1, 3)
                out[keys.FORCES_STD_EPISTEMIC] = self.calibration_forces.apply(
                    spread.to(phi.dtype))
        if forces and self.force_sigma == "local":
            local_var = torch.einsum("np,pq,nq->n", phi64, self.covariance, phi64)
            sigma = self.calibration_forces.pool(local_var.clamp_min(0).sqrt(), batch[keys.BATCH])
            sigma = self.calibration_forces.apply(sigma.to(phi.dtype))
            out[keys.FORCES_STD_EPISTEMIC] = sigma[:, None].expand(-1, 3)
        out.update(_with_aleatoric(out, self.potential.aleatoric(batch), forces))
        return out


def _with_aleatoric(out: dict, aleatoric: dict, forces: bool) -> dict:
    """Totals σ² = epistemic² + aleatoric² (just the epistemic σ without a variance head)."""
    result = {keys.ENERGY_STD: out[keys.ENERGY_STD_EPISTEMIC]}
    if forces:
        result[keys.FORCES_STD] = out[keys.FORCES_STD_EPISTEMIC]
    if aleatoric:
        result.update(aleatoric)
        result[keys.ENERGY_STD] = (out[keys.ENERGY_STD_EPISTEMIC]**2
                                   + aleatoric[keys.ENERGY_VAR_ALEATORIC]).sqrt()
        if forces:
            variance = aleatoric[keys.FORCES_VAR_ALEATORIC][:, None].to(
                out[keys.FORCES_STD_EPISTEMIC].dtype)
            result[keys.FORCES_STD] = (out[keys.FORCES_STD_EPISTEMIC]**2 + variance).sqrt()
    return result


def training_precision(potential: Potential, frames: list[Frame], sigma_energy: float,
                       sigma_force: float, max_atoms: int = 256,
                       progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Λ (P, P) float64 from ``frames`` (see the module docstring; σ_E eV/atom, σ_F eV/Å),
    and the count of energy and force observations that went in."""
    model = potential.model
    n_params = last_layer_weights(model).numel()
    precision = torch.zeros(n_params, n_params, dtype=torch.float64)
    counts = {"energies": 0, "force_components": 0}
    for chunk in tqdm(_chunks(frames, max_atoms), desc="last-layer precision",
                      disable=not progress, leave=False):
        batch = potential.batch(chunk, dtype=torch.float64)
        with torch.no_grad():
            phi, _, _ = last_layer_features(model, batch)
        n_atoms = batch[keys.N_ATOMS].double()
        phi_total = phi.new_zeros(len(chunk), n_params).index_add(0, batch[keys.BATCH], phi)
        energy_rows = [k for k, f in enumerate(chunk) if f.energy is not None]
        scaled = phi_total[energy_rows] / (n_atoms[energy_rows, None] * sigma_energy)
        precision += scaled.T @ scaled
        counts["energies"] += len(energy_rows)
        if any(f.forces is not None for f in chunk):
            def phi_per_structure(moved):  # φ_S (B, P) as a function of the positions
                phi, _, _ = last_layer_features(model, {**batch, keys.POSITIONS: moved})
                return phi.new_zeros(len(chunk), phi.shape[1]).index_add(
                    0, batch[keys.BATCH], phi)

            jacobian = structure_jacobian(phi_per_structure, batch).flatten(0, 1)  # (3n, B, P)
            jacobian = jacobian[:, [f.forces is not None for f in chunk]] / sigma_force
            precision += torch.einsum("kbp,kbq->pq", jacobian, jacobian).detach()
            counts["force_components"] += 3 * sum(len(f) for f in chunk if f.forces is not None)
    return precision, counts


def _chunks(frames: list[Frame], max_atoms: int):
    """Consecutive groups of frames with at most ``max_atoms`` atoms (at least one frame)."""
    group, size = [], 0
    for frame in frames:
        if group and size + len(frame) > max_atoms:
            yield group
            group, size = [], 0
        group.append(frame)
        size += len(frame)
    if group:
        yield group


def fit_last_layer(potential: Potential, train: list[Frame], valid: list[Frame],
                   sigma_energy: float, sigma_force: float, force_sigma: str = "local",
                   n_heads: int = 16, seed: int = 0,
                   progress: bool = False) -> tuple[LastLayerUncertainty, dict]:
    """Build the last-layer uncertainty of a trained potential: Λ on ``train``, then ς² and
    the scales α_E, α_F on ``valid``. Returns the wrapped potential and a report."""
    from mlpot.train.metrics import evaluate
    from mlpot.uncertainty.calibration import miscalibration_area

    if not valid:
        raise ValueError("last-layer uncertainty needs validation frames to choose its scales")
    fit_copy = copy.deepcopy(potential).double()  # the fit runs in float64
    with torch.enable_grad():
        precision, counts = training_precision(fit_copy, train, sigma_energy, sigma_force,
                                               progress=progress)
    eigenvalues, vectors = torch.linalg.eigh(precision)
    eigenvalues = eigenvalues.clamp_min(0)
    # validation energies: σ² = φ_Sᵀ C φ_S for every prior ς² from one eigendecomposition
    plain = LastLayerUncertainty(potential, torch.zeros_like(precision),
                                 torch.zeros(0, len(precision), dtype=torch.float64))
    n_atoms = np.array([len(f) for f in valid])
    projected = []
    for chunk in _chunks(valid, 512):
        batch = fit_copy.batch(chunk, dtype=torch.float64)
        with torch.no_grad():
            phi, _, _ = last_layer_features(fit_copy.model, batch)
            phi_total = phi.new_zeros(len(chunk), phi.shape[1]).index_add(
                0, batch[keys.BATCH], phi)
            projected.append((phi_total @ vectors).numpy())
    projected = np.concatenate(projected)
    _, predicted = evaluate(plain, valid)
    energy_error = (np.array(predicted["energy"]) - [f.energy for f in valid]) / n_atoms
    scale_of_lambda = float(eigenvalues.mean())
    trials = []
    for exponent in range(-10, 1):
        prior = scale_of_lambda * 10.0**exponent
        sigma = np.sqrt((projected**2 / (eigenvalues.numpy() + prior)).sum(1)) / n_atoms
        scale = fit_sigma_scale(energy_error, sigma)
        trials.append((gaussian_nll(energy_error, scale * sigma), prior, scale))
    nll, prior, energy_scale = min(trials)
    inverse = 1.0 / (eigenvalues + prior)
    covariance = (vectors * inverse) @ vectors.T
    offsets = torch.zeros(0, len(precision), dtype=torch.float64)
    if force_sigma == "heads":
        generator = torch.Generator().manual_seed(seed)
        normal = torch.randn(n_heads, len(precision), generator=generator, dtype=torch.float64)
        offsets = (normal * inverse.sqrt()) @ vectors.T  # rows ~ N(0, C)
    result = LastLayerUncertainty(potential, covariance, offsets, energy_scale, 1.0, prior,
                                  force_sigma)
    report = {"n_parameters": len(precision), "observations": counts, "prior": prior,
              "prior_trials": [{"prior": p, "nll_energy": n, "scale": s} for n, p, s in trials],
              "force_sigma": force_sigma, "n_heads": len(offsets),
              "scale": {"energy": energy_scale}}
    if any(f.forces is not None for f in valid):
        result.calibration_forces = SigmaCalibration(per_atom=True)  # raw σ, one per atom
        _, predicted = evaluate(result, valid)
        with_forces = [k for k, f in enumerate(valid) if f.forces is not None]
        error = np.concatenate([predicted["forces"][k] - valid[k].forces for k in with_forces])
        sigma = np.concatenate([predicted["forces_std_epistemic"][k] for k in with_forces])
        structures = np.concatenate([np.full(len(valid[k]), k) for k in with_forces])
        with warnings.catch_warnings():  # a warning is in the report
            warnings.simplefilter("ignore")
            result.calibration_forces, fit = fit_calibration(
                error, sigma[:, 0], per_atom=True, name="forces σ", structures=structures)
        calibrated = np.repeat(result.calibration_forces.apply(
            result.calibration_forces.pool(sigma[:, 0], structures))[:, None], 3, 1)
        report["scale"]["forces"] = result.sigma_scale_forces
        report["calibration_forces"] = {
            **result.calibration_forces.to_json(), **fit,
            "miscalibration_area_before": miscalibration_area(error, sigma),
            "nll_before": gaussian_nll(error, sigma), "nll_after": gaussian_nll(error, calibrated),
            "rmse": float(np.sqrt(np.mean(error**2))), "mean_sigma_after": float(np.mean(
                calibrated))}
        report["miscalibration_area_forces"] = miscalibration_area(error, calibrated)
        report["calibration_forces"]["miscalibration_area_after"] = report[
            "miscalibration_area_forces"]
    report["miscalibration_area_energy"] = miscalibration_area(
        energy_error, result.sigma_scale_energy * np.sqrt(
            (projected**2 / (eigenvalues.numpy() + prior)).sum(1)) / n_atoms)
    return result, report


def save_last_layer(model: LastLayerUncertainty, path: str | Path,
                    metadata: dict | None = None) -> Path:
    """Save to folder ``path`` atomically: last_layer.json, last_layer.safetensors, model/."""
    from safetensors.torch import save as save_tensors

    with atomic_folder(path) as tmp:
        save(model.potential, tmp / "model", metadata)
        write_bytes_atomic(tmp / "last_layer.safetensors", save_tensors(
            {"covariance": model.covariance.contiguous().cpu(),
             "head_offsets": model.head_offsets.contiguous().cpu()}))
        write_json_atomic(tmp / "last_layer.json", {
            CHECKSUM: sha256(tmp / "last_layer.safetensors"),
            "format": FORMAT, "model": "model", "force_sigma": model.force_sigma,
            "prior": model.prior, "metadata": metadata or {},
            "sigma_scale": {"energy": model.sigma_scale_energy,
                            "forces": model.sigma_scale_forces},
            "sigma_calibration": {"forces": model.calibration_forces.to_json()}})
    return Path(path)


def load_last_layer(path: str | Path) -> LastLayerUncertainty:
    """Load a folder written by :func:`save_last_layer` (no code is executed). Every field
    and tensor shape is checked; problems raise ModelFileError naming file and field."""
    from safetensors.torch import load_file

    path = Path(path)
    index, tensors_file = path / "last_layer.json", path / "last_layer.safetensors"
    description = read_json_object(index)
    if description.get("format") != FORMAT:
        raise ModelFileError(f"{index}: format is {description.get('format')!r}, not {FORMAT!r}")
    if description.get("model", "model") != "model":
        raise ModelFileError(f"{index}: field 'model' must be \"model\", not "
                             f"{description.get('model')!r}")
    force_sigma = description.get("force_sigma", "local")
    if force_sigma not in FORCE_SIGMA:
        raise ModelFileError(f"{index}: field 'force_sigma' must be one of {FORCE_SIGMA}, not "
                             f"{force_sigma!r}")
    prior = finite_number(index, "prior", description.get("prior", 0.0), minimum=0.0)
    check_checksum(tensors_file, description.get(CHECKSUM), str(index))
    scale = sigma_scales(index, description)
    potential = load(path / "model")
    if type(potential.model) is not BehlerParrinello or potential.physics_terms:
        raise ModelFileError(f"{path / 'model'}: a {potential.model.kind!r} model; last-layer "
                             "uncertainty needs a Behler–Parrinello model without long-range terms")
    n = last_layer_weights(potential.model).numel()
    header = read_header(tensors_file)
    n_heads = header.get("head_offsets", ((0,), ""))[0][0]  # any number of sampled heads
    check_safetensors(tensors_file, {"covariance": ((n, n), torch.float64),
                                     "head_offsets": ((n_heads, n), torch.float64)},
                      config_file=f"{path / 'model'} (last layer of {n} weights)", found=header)
    try:
        tensors = load_file(str(tensors_file))
    except Exception as error:  # noqa: BLE001
        raise ModelFileError(f"{tensors_file}: not a readable safetensors file ({error})") \
            from error
    check_finite(tensors_file, tensors)
    calibration = stored_calibrations(index, description)
    try:
        return LastLayerUncertainty(potential, tensors["covariance"], tensors["head_offsets"],
                                    scale["energy"], scale["forces"], prior, force_sigma,
                                    calibration.get("forces")).eval()
    except (KeyError, ValueError) as error:
        raise ModelFileError(f"{index}: {error}") from error
