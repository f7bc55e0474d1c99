"""One training run from a RunConfig: read data, build and fit a potential, evaluate, plot.

Everything lands in ``config.out``: ``model/`` (the potential), ``run.json`` (config, seed,
versions, commit, data), ``log.csv``, ``metrics.json``, ``parity.png``, ``learning_curve.png``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mlpot import keys
from mlpot.config import RunConfig
from mlpot.data.dataset import (elements_of, force_rms, reference_energies, split_indices,
                                split_isolated_atoms, take)
from mlpot.data.lazy import is_lazy
from mlpot.data.records import Frame, check_elements, read_frames
from mlpot.errors import DataError
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello, LinearModel, build_model
from mlpot.models.moments import ElementMoments
from mlpot.models.variance import VarianceHead
from mlpot.potential import Potential
from mlpot.files import locked_folder, write_json_atomic
from mlpot.serialize import load, save
from mlpot.train.metrics import evaluate
from mlpot.train.formal_charges import fit_formal_charges
from mlpot.train.ridge import fit_linear
from mlpot.train.distributed import context
from mlpot.train.trainer import CHECKPOINT, Trainer, read_checkpoint, training_device
from mlpot.threads import atoms_per_batch, use_threads
from mlpot.uncertainty.calibration import (SigmaCalibration, calibration_curve,
                                           ensemble_errors, fit_calibration, gaussian_nll,
                                           miscalibration_area, uncertainty_metrics)
from mlpot.uncertainty.ensemble import Ensemble, load_model, save_ensemble
from mlpot.uncertainty.last_layer import fit_last_layer, save_last_layer


def versions() -> dict:
    """Versions of Python and the libraries a run depends on."""
    import ase
    import vesin

    import mlpot

    return {"python": platform.python_version(), "torch": torch.__version__,
            "ase": ase.__version__, "vesin": vesin.__version__, "numpy": np.__version__,
            "mlpot": mlpot.__version__}


def git_commit() -> str | None:
    """Commit of the mlpot source tree, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def load_data(config: RunConfig) -> dict[str, Sequence[Frame]]:
    """Training, validation, isolated-atom and test frames as the config says (lists, or
    lazy views of an on-disk HDF5 file: see :mod:`mlpot.data.ondisk`)."""
    data = config.data
    read = dict(energy_key=data.energy_key, forces_key=data.forces_key,
                db_select=data.db_select)
    reader = _delta_reader(data) or read_frames
    isolated, train = split_isolated_atoms(reader(data.train, **read))
    if not len(train):
        raise DataError(f"holds only isolated atoms ({len(isolated)} single-atom frames): "
                        "nothing to train on", source=data.train)
    if data.isolated_atoms:
        isolated += read_frames(data.isolated_atoms, **read)
    if data.valid:
        valid = split_isolated_atoms(reader(data.valid, **read))[1]
        if not len(valid):
            raise DataError("holds only isolated atoms: nothing to validate on",
                            source=data.valid)
    else:
        if len(train) < 2 and data.valid_fraction > 0:
            raise DataError(f"holds {len(train)} structure: too few to split into training "
                            f"and validation (data.valid_fraction); give more structures or "
                            f"a separate validation file (--valid, data.valid)",
                            source=data.train)
        valid_index, train_index = split_indices(len(train), (data.valid_fraction,), config.seed)
        valid, train = take(train, valid_index), take(train, train_index)
    if data.max_train is not None:
        train = train[:data.max_train]
    ions = [f for f in isolated if f.charge]
    if ions and config.model.long_range in ("coulomb", "both") and not is_lazy(train):
        train = list(train) + ions  # a lone ion tells the charge network what it carries
    tests = {Path(p).stem: reader(p, **read) for p in data.test}
    return {"train": train, "valid": valid, "isolated": isolated, **{
        f"test:{name}": frames for name, frames in tests.items()}}


def _delta_reader(data):
    """With ``data.delta_baseline``: a reader of label databases giving the differences of
    the selected level to the baseline level (Δ-learning); else None."""
    if not data.delta_baseline:
        return None
    from mlpot.label.delta import delta_frames

    level = data.db_select.split("=", 1)[1]

    def read(path, **_):
        return delta_frames(path, level, data.delta_baseline)

    return read


def build_potential(config: RunConfig, elements: list[int], e0: dict[str, float]) -> Potential:
    """An untrained potential of the configured kind for ``elements``."""
    m = config.model
    if m.kind in ("schnet", "painn", "equivariant"):
        model = build_model(m.kind, elements=elements, cutoff=m.cutoff,
                            cutoff_function=m.cutoff_function, baseline=m.baseline,
                            **m.architecture())
        return Potential(model, e0, variance_head(config, elements),
                         *long_range(config, elements))
    angular_cutoff = m.angular_cutoff or m.cutoff
    descriptor = SymmetryFunctions(
        elements, cutoff=m.cutoff, angular_cutoff=angular_cutoff,
        radial=default_radial(m.cutoff, m.n_radial),
        angular=default_angular(angular_cutoff, m.n_angular_eta, tuple(m.zetas)),
        angular_kind=m.angular_kind, cutoff_function=m.cutoff_function)
    if m.kind == "linear":
        model = LinearModel(descriptor, ridge=m.ridge or 0.0)
    else:
        model = BehlerParrinello(descriptor, hidden=m.hidden, activation=m.activation,
                                 baseline=m.baseline)
    return Potential(model, e0, variance_head(config, elements), *long_range(config, elements))


def long_range(config: RunConfig, elements: list[int]) -> tuple:
    """(electrostatics, dispersion) as ``model.long_range`` asks (None for each absent):
    learned charges + Coulomb ("coulomb"), learned volumes + damped C6/r⁶ ("dispersion"),
    or both ("both")."""
    from mlpot.physics.dispersion import Dispersion
    from mlpot.physics.electrostatics import Electrostatics

    m = config.model
    coulomb = dispersion = None
    if m.long_range in ("coulomb", "both"):
        coulomb = Electrostatics(elements, m.cutoff, exclusion_radius=m.exclusion_radius,
                                 neutrality=m.charge_neutrality)
    if m.long_range in ("dispersion", "both"):
        dispersion = Dispersion(elements, m.cutoff, pair_cutoff=m.dispersion_cutoff)
    return coulomb, dispersion


def variance_head(config: RunConfig, elements: list[int]) -> VarianceHead | None:
    """The aleatoric variance head if ``training.aleatoric`` asks for one."""
    t = config.training
    if not t.aleatoric:
        return None
    return VarianceHead(elements, config.model.cutoff, t.sigma_energy, t.sigma_force)


@torch.no_grad()
def fit_statistics(potential: Potential, train: Sequence[Frame]) -> None:
    """Set a trainable model's statistics from ``train``.

    Behler–Parrinello and the message-passing models (SchNet, PaiNN) get the networks' output
    scale (the RMS force component, eV/Å × 1 Å: forces are what the networks mostly learn) and
    the baseline energies b_Z by least squares on E_b − Σ E0 ≈ Σ_Z b_Z Σ_{i∈Z} n_i (n_i from
    ``model.coordination``, zero for a free atom, so isolated atoms keep E0).
    Behler–Parrinello also gets descriptor mean/std per element, the equivariant model the
    mean number of neighbours per atom (its sums are divided by it). One pass over ``train``
    in chunks: only per-frame numbers and running feature moments are kept.
    """
    model = potential.model
    n_el = len(model.elements)
    descriptor = getattr(model, "descriptor", None)  # None for SchNet and PaiNN
    species_index = (model if descriptor is None else descriptor).species_index
    heads = [h for h in (potential.variance_head,
                         getattr(potential.long_range, "charge_head", None),
                         getattr(potential.dispersion, "volume_head", None)) if h is not None]
    features = ElementMoments(n_el)
    head_features = [ElementMoments(n_el) for _ in heads]
    coordination_sums, residuals, edges_per_atom = [], [], []
    for start in range(0, len(train), 64):
        frames = list(train[start:start + 64])  # read once (on-disk frames)
        batch = potential.batch(frames, dtype=torch.float64)
        index = species_index[batch["numbers"]]
        if descriptor is not None:
            features.add(descriptor(batch), index)
        for k, head in enumerate(heads):  # variance, charge, volume heads: own G2 inputs
            head_features[k].add(head.descriptor(batch),
                                 head.descriptor.species_index[batch["numbers"]])
        edges = torch.bincount(batch["batch"][batch[keys.EDGE_INDEX][0]], minlength=len(frames))
        edges_per_atom += (edges.double() / batch[keys.N_ATOMS]).tolist()
        sums = torch.zeros(len(frames) * n_el, dtype=torch.float64).index_add(
            0, batch["batch"] * n_el + index, model.coordination(batch))
        coordination_sums.append(sums.reshape(len(frames), n_el))
        e0 = potential.e0.double()[batch["numbers"]]
        residuals.append(batch["energy"] - torch.zeros(len(frames), dtype=torch.float64)
                         .index_add(0, batch["batch"], e0))
    solution = torch.linalg.lstsq(torch.cat(coordination_sums),
                                  torch.cat(residuals)[:, None]).solution[:, 0]
    scale = max(force_rms(train), 1e-3)
    for k, head in enumerate(heads):
        head.set_statistics(*head_features[k].stats(head.descriptor.n_features))
    if getattr(model, "kind", None) == "equivariant":
        model.set_statistics(scale, solution, mean_neighbours=float(np.mean(edges_per_atom)))
    elif descriptor is None:
        model.set_statistics(scale, solution)
    else:
        mean, std = features.stats(descriptor.n_features)
        model.set_statistics(mean, std, scale, solution)


def bootstrap_sample(frames: Sequence[Frame], seed: int) -> Sequence[Frame]:
    """len(frames) frames drawn with replacement (a bootstrap resample), seeded."""
    rng = np.random.default_rng(seed)
    return take(frames, rng.integers(0, len(frames), len(frames)))


def recalibrate(ensemble: Ensemble, frames: list[Frame]) -> dict:
    """Fit the ensemble's σ calibrations (:func:`~mlpot.uncertainty.calibration.fit_calibration`)
    on ``frames`` (validation): energies per structure, forces per atom (one σ for its three
    components). Returns per quantity the fitted map, the fit's report and the validation
    miscalibration area and NLL of the raw spread (before) and the calibrated σ (after)."""
    ensemble.calibration_energy = SigmaCalibration()
    ensemble.calibration_forces = SigmaCalibration(per_atom=True)
    _, predicted = evaluate(ensemble, frames)
    observations = {"energy": (np.asarray(predicted["energy"]) - [f.energy for f in frames],
                               np.asarray(predicted["energy_std"]))}
    with_forces = [k for k, f in enumerate(frames) if f.forces is not None]
    if with_forces and predicted.get("forces_std"):
        observations["forces"] = (
            np.concatenate([predicted["forces"][k] - frames[k].forces for k in with_forces]),
            np.concatenate([predicted["forces_std"][k][:, 0] for k in with_forces]))
    structures = {"forces": np.concatenate([np.full(len(frames[k]), k) for k in with_forces])
                  if "forces" in observations else None, "energy": None}
    report = {}
    for name, (error, sigma) in observations.items():
        with warnings.catch_warnings():  # a warning is in ``fit``, for the caller to show
            warnings.simplefilter("ignore")
            calibration, fit = fit_calibration(error, sigma, per_atom=name == "forces",
                                               name=f"{name} σ", structures=structures[name])
        setattr(ensemble, f"calibration_{name}", calibration)
        error = error.reshape(len(sigma), -1)
        raw = np.broadcast_to(sigma[:, None], error.shape)
        pooled = sigma if structures[name] is None else calibration.pool(sigma, structures[name])
        after = np.broadcast_to(calibration.apply(pooled)[:, None], error.shape)
        report[name] = {**calibration.to_json(), **fit,
                        "miscalibration_area_before": miscalibration_area(error, raw),
                        "miscalibration_area_after": miscalibration_area(error, after),
                        "nll_before": gaussian_nll(error, raw),
                        "nll_after": gaussian_nll(error, after),
                        "rmse": float(np.sqrt(np.mean(error**2))),
                        "mean_sigma_after": float(np.mean(after))}
    return report


def constant_sigma_reference(force_errors: np.ndarray, metrics: dict, valid: dict) -> dict:
    """What a σ is to be judged against on one data set: the NLL of a constant force σ equal to
    the validation force RMSE (eV/Å), and the ratio of the mean epistemic force σ to this set's
    force RMSE (1 where σ is as large as the errors)."""
    sigma, rmse = metrics.get("force_sigma_epistemic"), metrics.get("force_rmse")
    constant = valid.get("force_rmse")
    return {"nll_constant_sigma": gaussian_nll(force_errors, constant / 1000) if constant
            else None,
            "force_sigma_over_rmse": sigma / rmse if sigma is not None and rmse else None}


def train_member(config: RunConfig, train: list[Frame], valid: list[Frame], elements: list[int],
                 e0: dict[str, float], out: Path, seed: int, metadata: dict, progress: bool,
                 resume: bool, init: Path | None = None, caches: dict | None = None) -> dict:
    """Build, fit and save one potential into ``out/model``; returns the training summary.
    ``init``: a saved model to start from (warm start / fine-tuning) instead of a new one.
    ``caches``: {"last": the descriptor cache of the previous member}, used when it holds
    these very frames and replaced by this member's (members on the same frames share one;
    bootstrap members keep only one alive at a time)."""
    say = print if progress else (lambda *a, **k: None)
    if init is not None:
        potential = initial_potential(init, elements, e0)
        if potential.model.kind != config.model.kind:
            raise ValueError(f"{init}: a {potential.model.kind} model, but model.kind is "
                             f"{config.model.kind!r}")
        dtype = getattr(torch, config.training.dtype)
        trainer = Trainer(potential.to(dtype), train, valid, config.training, out, seed=seed,
                          metadata={**metadata, "init_model": str(init)}, progress=progress)
        return trainer.run(resume=resume)
    potential = build_potential(config, elements, e0)
    dtype = getattr(torch, config.training.dtype)
    if config.model.kind == "linear":
        say("fitting the linear model in closed form (ridge)", flush=True)
        potential = potential.double()
        fit = fit_linear(potential, train, valid, config.training.sigma_energy,
                         config.training.sigma_force, config.model.ridge)
        save(potential.to(dtype), out / "model", {**metadata, "fit": fit})
        return {"stopped_by": "closed form", "fit": fit}
    fit_statistics(potential, train)
    start = fit_formal_charges(potential, train, seed=seed)
    if start:
        say(f"formal charges fitted to the data's total charges: RMS excess "
            f"{start['rms_excess_before']:.3f} → {start['rms_excess_after']:.3f} e "
            f"({start['steps']} steps)", flush=True)
    caches = {} if caches is None else caches
    trainer = Trainer(potential.to(dtype), train, valid, config.training, out, seed=seed,
                      metadata=metadata, progress=progress, feature_cache=caches.pop("last", None))
    caches["last"] = trainer.feature_cache
    return trainer.run(resume=resume)


def initial_potential(path: Path, elements: list[int], e0: dict[str, float]) -> Potential:
    """A trained model to continue from, with this data's reference energies E0 (the level of
    theory may differ; the networks and their input statistics are kept)."""
    start = load(path)
    missing = sorted(set(elements) - set(start.elements))
    if missing:
        raise ValueError(f"{path}: the model does not cover elements {missing} of the data")
    return Potential(start.model, e0, start.variance_head, start.long_range, start.dispersion)


def member_init(init_model: str | None, k: int) -> Path | None:
    """The model member ``k`` starts from: member k of an ensemble folder (cycling), or the
    one model of a model folder."""
    if init_model is None:
        return None
    path = Path(init_model)
    if (path / "ensemble.json").exists():
        from mlpot.uncertainty.ensemble import member_folders

        members = member_folders(path)
        return members[k % len(members)]
    return path


def member_budget(total: float | None, done: list[dict], n_members: int) -> float | None:
    """Minutes of the next ensemble member: an equal share of what the members before it
    (their summaries ``done``, ``minutes`` each) left of the run's ``total``; the last one
    gets all that remains. Never below 1 % of an equal share, so that a member that an
    earlier one's overrun leaves without time still trains one (part) epoch."""
    if total is None:
        return None
    left = total - sum(summary.get("minutes", 0.0) for summary in done)
    return max(left / (n_members - len(done)), 0.01 * total / n_members)


def run_training(config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train (or fit) the configured potential and evaluate it; returns the summary dict.

    The output folder is locked for the run (:func:`mlpot.files.locked_folder`): a second
    run into the same folder fails at once instead of overwriting this one's files. Under
    torchrun only the first process (rank 0) holds the lock."""
    out = Path(config.out)
    first_process = int(os.environ.get("RANK", "0")) == 0
    with locked_folder(out) if first_process else contextlib.nullcontext():
        return _run_training(config, resume, progress)


def _run_training(config: RunConfig, resume: bool, progress: bool) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.time()
    ctx = context(training_device(config.training.device))  # torchrun: one of several
    progress = progress and ctx.is_main
    if ctx.distributed and config.model.kind == "linear":
        raise ValueError("a linear model is fitted in closed form: run it without torchrun")
    say = print if progress else (lambda *a, **k: None)
    say(f"reading data ({config.data.train})", flush=True)
    data = load_data(config)
    train, valid = data["train"], data["valid"]
    elements = elements_of(train, valid, data["isolated"])
    e0, e0_source = reference_energies(train, elements, data["isolated"])
    for name, frames in data.items():
        if name.startswith("test:"):
            check_elements(frames, elements)
    say(f"{len(train)} training, {len(valid)} validation frames; elements {elements}; "
        f"E0 from {e0_source}", flush=True)
    threads = use_threads(atoms_per_batch(train, config.training.batch_size),
                          config.training.threads)
    say(f"torch threads: {threads}", flush=True)

    info = {"config": config.model_dump(), "seed": config.seed, "versions": versions(),
            "git_commit": git_commit(), "command": sys.argv, "e0_source": e0_source,
            "reference_energies": e0, "n_train": len(train), "n_valid": len(valid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if ctx.is_main:
        if resume:  # a damaged checkpoint is reported before anything is written
            for checkpoint in [out / CHECKPOINT, *sorted(out.glob(f"members/*/{CHECKPOINT}"))]:
                if checkpoint.exists():
                    read_checkpoint(checkpoint, torch.device("cpu"))
        write_json_atomic(out / "run.json", info)
    metadata = {"seed": config.seed, "git_commit": info["git_commit"],
                "versions": info["versions"], "training_config": config.model_dump()}
    if config.model.dispersion_correction != "none":
        from mlpot.physics.correction import correction_description

        metadata["dispersion_correction"] = correction_description(
            config.model.dispersion_correction, config.model.xc_functional)
    if config.data.delta_baseline:
        from mlpot.label.delta import baseline_description

        metadata["baseline"] = baseline_description(config.data.train,
                                                    config.data.delta_baseline)

    n_members = config.training.ensemble
    if n_members == 1:
        summary = train_member(config, train, valid, elements, e0, out, config.seed, metadata,
                               progress, resume, member_init(config.training.init_model, 0))
        if not ctx.is_main:  # the other torchrun processes only train
            return summary
        if config.training.last_layer != "off":
            say("fitting the last-layer uncertainty", flush=True)
            uncertain, summary["last_layer"] = fit_last_layer(
                load(out / "model"), train, valid, config.training.sigma_energy,
                config.training.sigma_force, config.training.last_layer,
                config.training.last_layer_heads, config.seed, progress)
            save_last_layer(uncertain, out / "model", metadata)
    else:
        summaries, members, caches = [], [], {}
        for k in range(n_members):
            seed = config.seed + k
            budget = member_budget(config.training.max_minutes, summaries, n_members)
            say(f"ensemble member {k + 1} of {n_members} (seed {seed}"
                + (f", {budget:.2f} of {config.training.max_minutes:g} minutes)"
                   if budget is not None else ")"), flush=True)
            torch.manual_seed(seed)
            member_train = bootstrap_sample(train, seed) if config.training.bootstrap else train
            member_out = out / "members" / f"member_{k}"
            member_config = config.model_copy(update={"training": config.training.model_copy(
                update={"max_minutes": budget})})
            summaries.append(train_member(member_config, member_train, valid, elements, e0,
                                          member_out, seed, {**metadata, "seed": seed},
                                          progress, resume,
                                          member_init(config.training.init_model, k), caches))
            summaries[-1]["budget_minutes"] = budget
            if ctx.is_main:
                members.append(load(member_out / "model"))
        if not ctx.is_main:
            return {"members": summaries}
        ensemble = Ensemble(members)
        summary = {"members": summaries, "stopped_by": "ensemble of " + str(n_members)}
        if valid:
            summary["recalibration"] = recalibrate(ensemble, valid)
        save_ensemble(ensemble, out / "model", metadata)

    best = load_model(out / "model")
    metrics, predictions, curves = {}, {}, {}
    for name, frames in [("valid", valid)] + [(k[5:], v) for k, v in data.items()
                                                 if k.startswith("test:")]:
        if frames:
            metrics[name], predictions[name] = evaluate(best, frames, progress=progress)
            if "energy_std" in predictions[name]:  # an ensemble, last layer or variance head
                metrics[name].update(uncertainty_metrics(frames, predictions[name]))
                errors = ensemble_errors(frames, predictions[name])
                if "forces" in errors:
                    curves[name] = calibration_curve(*errors["forces"])
                    metrics[name].update(constant_sigma_reference(
                        errors["forces"][0], metrics[name], metrics.get("valid", {})))
    summary.update(metrics=metrics, wall_seconds=time.time() - started, out=str(out))
    write_json_atomic(out / "metrics.json", summary)
    from mlpot import plots

    plots.parity(data, predictions, out / "parity.png")
    if curves:
        plots.calibration(curves, out / "calibration.png")
    if (out / "log.csv").exists():
        plots.learning_curve(out / "log.csv", out / "learning_curve.png")
    return summary
