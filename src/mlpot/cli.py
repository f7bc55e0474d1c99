"""Command line: ``mlpot train|ensemble|eval|md|label|learn|report|data|export``. It parses
arguments and calls the library; nothing more."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from mlpot import __version__
from mlpot.errors import MlpotError
from mlpot.threads import atoms_per_batch, check_threads, use_threads


def _train(args) -> int:
    from mlpot.config import config_from_dict, load_config

    overrides = _set_overrides(args.set or [])  # the flags below win over --set
    for flag, key in [("batch_size", "training.batch_size"), ("lr", "training.learning_rate"),
                      ("train", "data.train"), ("valid", "data.valid"),
                      ("isolated_atoms", "data.isolated_atoms"), ("energy_key", "data.energy_key"),
                      ("forces_key", "data.forces_key"), ("model", "model.kind"),
                      ("size", "model.size"),
                      ("cutoff", "model.cutoff"), ("max_minutes", "training.max_minutes"),
                      ("max_epochs", "training.max_epochs"), ("seed", "seed"), ("out", "out"),
                      ("dtype", "training.dtype"), ("threads", "training.threads"),
                      ("device", "training.device"), ("ensemble", "training.ensemble"),
                      ("last_layer", "training.last_layer"),
                      ("long_range", "model.long_range"),
                      ("dispersion_correction", "model.dispersion_correction"),
                      ("xc", "model.xc_functional"), ("select", "data.db_select")]:
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.test:
        overrides["data.test"] = args.test
    if args.bootstrap:
        overrides["training.bootstrap"] = True
    if args.aleatoric:
        overrides["training.aleatoric"] = True
    if args.config:
        config = load_config(args.config, overrides)
    else:
        if "data.train" not in overrides:
            raise MlpotError("give a CONFIG.yaml or --train FILE")
        config = config_from_dict({}, overrides, source="command line")
    from mlpot.train.run import run_training  # torch: imported once the config is valid

    try:
        summary = run_training(config, resume=args.resume)
    except ValueError as error:  # e.g. an init_model that does not fit the data
        raise MlpotError(str(error)) from error
    if "metrics" not in summary:  # a torchrun process other than rank 0: it only trained
        return 0
    out = Path(config.out)
    print(f"model saved: {out / 'model'}")
    print(f"metrics: {out / 'metrics.json'}   log: {out / 'log.csv'}   "
          f"plots: {out / 'parity.png'}, {out / 'learning_curve.png'}")
    for name, m in summary["metrics"].items():
        force = (f"{m['force_rmse']:.1f} meV/Å" if m["force_rmse"] is not None
                 else "n/a (no reference forces)")
        print(f"  {name:>16}: energy RMSE {m['energy_rmse']:.2f} meV/atom, "
              f"force RMSE {force}{_stress_rmse(m)} ({m['n_structures']} structures)")
        if m.get("force_sigma_over_rmse") is not None:
            print(f"  {'':>16}  mean force σ {m['force_sigma_epistemic']:.1f} meV/Å "
                  f"(σ/RMSE {m['force_sigma_over_rmse']:.2f}), NLL {m['nll']:.3g} (constant σ: "
                  f"{m['nll_constant_sigma']:.3g}), miscalibration area "
                  f"{m['miscalibration_area_force']:.3f}")
        if m.get("force_sigma_max_atom") is not None:
            print(f"  {'':>16}  {_watchdog_sigma(m)}")
    calibrations = dict(summary.get("recalibration") or {})
    if (summary.get("last_layer") or {}).get("calibration_forces"):
        calibrations["forces"] = summary["last_layer"]["calibration_forces"]
    for name, fit in calibrations.items():
        print(_calibration_line(name, fit, "validation"))
    return 0


def _calibration_line(name: str, fit: dict, source: str) -> str:
    """One line on a fitted σ calibration (recalibrate's report of one quantity)."""
    unit = "eV/Å" if name == "forces" else "eV"
    return (f"σ calibration ({name}) fitted on {fit['observations']} {source} "
            f"{'atoms' if name == 'forces' else 'structures'}: scale {fit['scale']:.3g}, exponent "
            f"{fit['exponent']:.2f}, floor {fit['floor']:.3g} {unit}; miscalibration area "
            f"{fit['miscalibration_area_before']:.3f} → {fit['miscalibration_area_after']:.3f}, "
            f"NLL {fit['nll_before']:.3g} → {fit['nll_after']:.3g}, mean σ "
            f"{fit['mean_sigma_after']:.3g} vs RMSE {fit['rmse']:.3g} {unit}"
            + (f" — warning: {fit['warning']}" if fit.get("warning") else ""))


def _watchdog_sigma(metrics: dict) -> str:
    """The largest atomic epistemic force σ per structure, as `mlpot md --max-force-sigma`
    compares it (mean and 95 % quantile over structures)."""
    mean, high = metrics["force_sigma_max_atom"], metrics["force_sigma_max_atom_p95"]
    return (f"largest atomic force σ per structure {mean:.1f} meV/Å (95 %: {high:.1f}): what "
            f"md --max-force-sigma compares (e.g. --max-force-sigma {3 * mean / 1000:.2g} eV/Å "
            "for 3×)")


def _stress_rmse(metrics: dict) -> str:
    """", stress RMSE … eV/Å³ (… GPa)" where the data carry stress, else ""."""
    if "stress_rmse" not in metrics:
        return ""
    return (f", stress RMSE {metrics['stress_rmse']:.2e} eV/Å³ "
            f"({metrics['stress_rmse_gpa']:.3f} GPa)")


def _set_overrides(assignments: list[str]) -> dict:
    """{"section.key": value} from ``--set section.key=value`` (value read as YAML)."""
    import yaml

    overrides = {}
    for assignment in assignments:
        dotted, equals, text = assignment.partition("=")
        if not equals or not dotted.strip():
            raise MlpotError(f"--set {assignment!r}: expected section.key=value")
        try:
            overrides[dotted.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MlpotError(f"--set {assignment!r}: value is not YAML ({error})") from None
    return overrides


def _eval(args) -> int:
    from mlpot.data.dataset import split_isolated_atoms
    from mlpot.data.records import read_frames
    from mlpot.potential import Potential
    from mlpot.train.metrics import evaluate
    from mlpot.uncertainty.calibration import uncertainty_metrics
    from mlpot.uncertainty.ensemble import load_model

    from mlpot.label.delta import baseline_engine, subtract_baseline

    check_threads(args.threads)
    potential = load_model(args.model)
    frames = read_frames(args.file, energy_key=args.energy_key, forces_key=args.forces_key,
                         db_select=args.select)
    # isolated atoms are E0 labels, not test structures (an HDF5 file stays a lazy view)
    frames = split_isolated_atoms(frames)[1] or frames
    use_threads(atoms_per_batch(frames, args.batch_size), args.threads)
    baseline = baseline_engine(args.model)
    if baseline is not None:  # a Δ-model: compare ΔE with reference − baseline (same errors)
        frames = subtract_baseline(frames, baseline)
    # σ metrics (Spearman, calibration) need every prediction; plain errors are running sums
    with_sigma = not isinstance(potential, Potential) or potential.variance_head is not None
    if args.write:
        from mlpot.train.predictions import PredictionWriter

        with PredictionWriter(args.write, args.energy_key, args.forces_key) as writer:
            metrics, predicted = evaluate(potential, frames, batch_size=args.batch_size,
                                          progress=not args.json, keep=with_sigma, stress=True,
                                          on_chunk=writer.add)
    else:
        metrics, predicted = evaluate(potential, frames, batch_size=args.batch_size,
                                      progress=not args.json, keep=with_sigma)
    if with_sigma and "energy_std" in predicted:
        metrics.update(uncertainty_metrics(frames, predicted))
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.file}: {metrics['n_structures']} structures")
        print(f"  energy MAE {metrics['energy_mae']:.3f}  RMSE {metrics['energy_rmse']:.3f} meV/atom")
        if metrics["force_rmse"] is not None:
            print(f"  force  MAE {metrics['force_mae']:.2f}  RMSE {metrics['force_rmse']:.2f} meV/Å")
        if "stress_rmse" in metrics:
            print(f"  stress MAE {metrics['stress_mae']:.2e}  RMSE {metrics['stress_rmse']:.2e} "
                  f"eV/Å³ = MAE {metrics['stress_mae_gpa']:.3f}  RMSE "
                  f"{metrics['stress_rmse_gpa']:.3f} GPa "
                  f"({metrics['n_structures_with_stress']} structures)")
        if args.write:
            print(f"  predictions: {args.write}")
        if "energy_sigma_epistemic" in metrics:  # a variance head alone has no epistemic σ
            part = "epistemic" if metrics["energy_sigma_epistemic"] is not None else "aleatoric"
            print(f"  {part} σ: energy {metrics[f'energy_sigma_{part}']:.3f} meV/atom, "
                  f"force {metrics[f'force_sigma_{part}'] or float('nan'):.2f} meV/Å; "
                  f"Spearman(σ, |error|) energy {_rounded(metrics['spearman_energy'])} "
                  f"(calibrated: {_rounded(metrics['spearman_energy_reference'])}), force per "
                  f"atom {_rounded(metrics['spearman_force'])}, per structure "
                  f"{_rounded(metrics['spearman_force_structure'])} (calibrated: "
                  f"{_rounded(metrics['spearman_force_structure_reference'])})")
        if metrics.get("force_sigma_max_atom") is not None:
            print(f"  {_watchdog_sigma(metrics)}")
    return 0


def _rounded(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _md(args) -> int:
    from ase.io import read

    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.dynamics.md import EXIT_CODES, check_md_settings, run_md
    from mlpot.serialize import write_json_atomic

    check_threads(args.threads)
    # 0 disables a watchdog; the others must be positive and finite (one-line errors)
    settings = dict(steps=args.steps, dt=args.dt, temperature=args.temperature,
                    ensemble=args.ensemble, friction=args.friction, interval=args.interval,
                    tdamp=args.tdamp, pdamp=args.pdamp, pressure=args.pressure,
                    min_distance=args.min_distance or None,
                    max_force_sigma=args.max_force_sigma,
                    max_temperature="auto" if args.max_temperature is None
                    else args.max_temperature or None,
                    max_energy_drift="auto" if args.max_energy_drift is None
                    else args.max_energy_drift or None,
                    fragment_distance=args.fragment_distance or None)
    try:
        check_md_settings(**{key: value for key, value in settings.items()
                             if value != "auto"})
    except ValueError as error:
        raise MlpotError(f"md: {error}") from error
    try:
        atoms = read(args.structure, index=args.frame)
    except Exception as error:
        raise MlpotError(f"{args.structure}: cannot read frame {args.frame} ({error})") from error
    use_threads(len(atoms), args.threads)
    calculator = MlpotCalculator(args.model, dtype=args.dtype, device=args.device)
    if args.fragment_distance is None:  # default: the model's cutoff
        settings["fragment_distance"] = float(calculator.potential.cutoff)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(args.log) if args.log else out.with_suffix(".log")
    try:
        summary = run_md(atoms, calculator, trajectory=out, log=log, seed=args.seed,
                         on_uncertain=args.on_uncertain, thermostat=args.thermostat,
                         barostat=args.barostat, **settings)
    except ValueError as error:
        raise MlpotError(f"{args.model}, {args.structure}: {error}") from error
    summary_path = out.with_suffix(".json")
    write_json_atomic(summary_path, summary)
    print(f"trajectory: {out}   energy log: {log}   summary: {summary_path}")
    line = f"  mean T {summary['mean_temperature_K']:.1f} K"
    if summary["energy_drift_eV_per_atom_per_ps"] is not None:  # NVE
        line += (f", total-energy drift "
                 f"{summary['energy_drift_eV_per_atom_per_ps'] * 1000:.3f} meV/atom/ps")
    elif summary["conserved_energy_drift_eV_per_atom_per_ps"] is not None:  # NVT, NPT
        line += (f", conserved-energy drift (thermostat included) "
                 f"{summary['conserved_energy_drift_eV_per_atom_per_ps'] * 1000:.3f} "
                 "meV/atom/ps")
    if args.ensemble == "npt" and summary["volumes_A3"]:
        line += (f", mean P {sum(summary['pressures_GPa']) / len(summary['pressures_GPa']):.3f}"
                 f" GPa, V {summary['volumes_A3'][0]:.1f} → {summary['volumes_A3'][-1]:.1f} Å³")
    print(line)
    for event in summary["uncertain"]:
        print(f"uncertain: step {event['step']}, atom {event['atom']} ({event['symbol']}), "
              f"force σ {event['force_sigma']:.3f} eV/Å", file=sys.stderr)
    if summary["stopped"]:
        stopped = summary["stopped"]
        step, reason = stopped["step"], stopped["reason"].removeprefix(f"step {stopped['step']}: ")
        if step == 0:
            print(f"error: MD stopped at step 0, the starting structure: {reason}; the "
                  "trajectory holds that one frame", file=sys.stderr)
        else:
            print(f"error: MD stopped at step {step} of {args.steps}: {reason}; the "
                  f"trajectory's last frame ({summary['frames_written']} written) is step "
                  f"{step}", file=sys.stderr)
        return EXIT_CODES[stopped["kind"]]
    return 0


def _engine(args):
    from mlpot.label.engines import ASEEngine, PySCFEngine, XTBEngine

    if args.engine == "pyscf":
        return PySCFEngine(method=args.method or "hf", basis=args.basis or "sto-3g",
                           forces=args.forces, threads=args.threads)
    if args.engine == "xtb":
        return XTBEngine(method=args.method or "GFN2-xTB")
    if not args.calculator:
        raise MlpotError("--engine ase needs --calculator module:Class")
    try:
        arguments = json.loads(args.calculator_args)
    except json.JSONDecodeError as error:
        raise MlpotError(f"--calculator-args is not JSON: {error}") from error
    return ASEEngine(args.calculator, arguments)


def _label(args) -> int:
    from ase.io import read

    from mlpot.label.runner import label_structures

    try:
        structures = read(args.structures, index=":")
    except Exception as error:
        raise MlpotError(f"{args.structures}: cannot read structures ({error})") from error
    try:
        engine = _engine(args)
    except ValueError as error:
        raise MlpotError(str(error)) from error
    summary = label_structures(structures, engine, args.db, scheduler=args.scheduler,
                               workers=args.workers, retry_failed=args.retry_failed,
                               sources=[f"{args.structures}:{k}" for k in range(len(structures))])
    print(json.dumps(summary))
    return 0


def _report(args) -> int:
    from mlpot.label.cost import report

    model = None
    if args.model:
        from mlpot.uncertainty.ensemble import load_model

        model = load_model(args.model).eval()
    result = report(args.db, model)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.db}:")
    for level in result["levels"]:
        per_label = level["cpu_seconds_per_label"]
        line = (f"  {level['level']}: {level['labels']} labels ({level['failed']} failed), "
                f"{level['cpu_hours']:.4f} CPU-h, "
                f"{per_label if per_label is None else round(per_label, 3)} CPU-s per label")
        if "speedup" in level:
            line += f", model {level['speedup']:.0f}x faster"
        print(line)
    if "model_seconds_per_prediction" in result:
        print(f"  model: {result['model_seconds_per_prediction'] * 1000:.2f} ms per prediction")
    return 0


def _learn(args) -> int:
    from mlpot.active.loop import run_learning
    from mlpot.config import load_learn_config

    config = load_learn_config(args.config)
    try:
        state = run_learning(config)
    except ValueError as error:
        raise MlpotError(str(error)) from error
    last = state["history"][-1] if state["history"] else {}
    print(json.dumps({"iterations": state["finished"], "stopped_by": state.get("stopped_by"),
                      "labels": last.get("labels"),
                      "test_force_rmse": last.get("test_force_rmse")}))
    return 0


def _data_convert(args) -> int:
    from mlpot.data.ondisk import convert, print_progress

    *inputs, out = args.paths
    if not inputs:
        raise MlpotError("give at least one input file and the output OUT.h5")
    summary = convert(inputs, out, energy_key=args.energy_key, forces_key=args.forces_key,
                      db_select=args.db_select, progress=print_progress(args.progress_every))
    print(f"{summary['path']}: {summary['frames']} frames ({summary['atoms']} atoms), "
          f"{summary['bytes'] / 2**20:.1f} MiB")
    return 0


def _ensemble(args) -> int:
    from mlpot.data.records import read_frames
    from mlpot.train.run import recalibrate
    from mlpot.uncertainty.ensemble import combine_models, save_ensemble

    ensemble, metadata = combine_models(args.models)
    if args.valid:
        report = recalibrate(ensemble, read_frames(args.valid))
        metadata["recalibration"] = {"valid": str(Path(args.valid).resolve()), **report}
        for name, fit in report.items():
            print(_calibration_line(name, fit, args.valid))
    path = save_ensemble(ensemble, args.out, metadata)
    kinds = [member.model.kind for member in ensemble.members]
    print(f"{path}: ensemble of {len(kinds)} ({', '.join(kinds)})"
          + ("" if args.valid else "; σ not recalibrated (give --valid FILE)"))
    return 0


def _export(args) -> int:
    import torch

    from mlpot.export import export_for_lammps, export_potential, uses_triplets
    from mlpot.uncertainty.ensemble import load_model

    potential = load_model(args.model)
    if args.dtype:
        potential = potential.to(getattr(torch, args.dtype))
    if args.lammps and args.stress:
        raise MlpotError("--lammps programs give LAMMPS the virial; --stress is for the "
                         "Python program")
    try:
        if args.lammps:
            path = export_for_lammps(potential, args.out)
        else:
            path = export_potential(potential, args.out, stress=args.stress, aoti=args.aoti)
    except ValueError as error:
        raise MlpotError(f"{args.model}: {error}") from error
    triplets = (f", triplets within {potential.model.angular_cutoff} Å"
                if uses_triplets(potential) else "")
    dtype = str(potential.dtype).removeprefix("torch.")
    if args.lammps:
        from ase.data import chemical_symbols

        symbols = " ".join(chemical_symbols[z] for z in potential.elements)
        print(f"{path}: exported for LAMMPS ({dtype}; edges within {potential.cutoff} Å"
              f"{triplets}); in LAMMPS: plugin load $(bash scripts/lammps.sh), "
              f"pair_style mlpot {path}, pair_coeff * * (one of {symbols} per atom type)")
    else:
        print(f"{path}: exported ({dtype}; inputs: positions, numbers, cell, edges within "
              f"{potential.cutoff} Å{triplets})")
    return 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: …)" to help texts that do not state a default themselves; flags
    whose default is None (a config key decides) or off (store_true) get none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and its subcommands') whose --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def _config_field(dotted: str):
    """The pydantic field of RunConfig's key ``dotted`` ("training.batch_size")."""
    from mlpot.config import RunConfig

    section, field = RunConfig, None
    for name in dotted.split("."):
        field = section.model_fields[name]
        section = field.annotation
    return field


def _choices(dotted: str) -> list[str]:
    """The values a Literal config key allows, for a flag's choices."""
    return list(typing.get_args(_config_field(dotted).annotation))


def _key(text: str, dotted: str, default: str | None = None) -> str:
    """Help text naming the config key a flag sets and that key's default."""
    if default is None:
        value = _config_field(dotted).default
        default = "none" if value is None else str(value)
    return f"{text} (config {dotted}; default: {default})".replace("%", "%%").lstrip()


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="mlpot", description=__doc__)
    top.add_argument("--version", action="version", version=f"mlpot {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a potential (YAML config and/or flags)")
    train.add_argument("config", nargs="?", help="YAML run config (flags below override it)")
    train.add_argument("--train", help=_key("training data: extxyz, ASE .db, rMD17 .npz or "
                                            "mlpot .h5", "data.train", "required"))
    train.add_argument("--valid", help=_key("validation file", "data.valid",
                                            "data.valid_fraction (5%) of --train"))
    train.add_argument("--test", action="append",
                       help=_key("test file (repeatable)", "data.test", "none"))
    train.add_argument("--isolated-atoms", help=_key("single-atom frames giving E0",
                                                     "data.isolated_atoms",
                                                     "E0 by least squares on --train"))
    train.add_argument("--energy-key", help=_key("info key of the reference energy (eV)",
                                                 "data.energy_key"))
    train.add_argument("--forces-key", help=_key("arrays key of the reference forces (eV/Å)",
                                                 "data.forces_key"))
    train.add_argument("--select", metavar="QUERY",
                       help=_key("ASE databases: which rows (an ase.db query, e.g. "
                                 "level=xtb/gfn2-xtb for one level of theory of a `mlpot label` "
                                 "database)", "data.db_select", "all rows"))
    train.add_argument("--model", choices=_choices("model.kind"),
                       help=_key("model kind", "model.kind"))
    train.add_argument("--size", choices=_choices("model.size"),
                       help=_key("architecture preset of the model", "model.size"))
    train.add_argument("--cutoff", type=float, help=_key("Å", "model.cutoff"))
    train.add_argument("--max-minutes", type=float,
                       help=_key("time budget of the whole run, minutes (with --ensemble M the "
                                 "members share it, each in turn; descriptor caching counts, "
                                 "once even across --resume)", "training.max_minutes"))
    train.add_argument("--max-epochs", type=int, help=_key("at most this many epochs",
                                                           "training.max_epochs"))
    train.add_argument("--batch-size", type=int, metavar="N",
                       help=_key("structures per optimizer step", "training.batch_size"))
    train.add_argument("--lr", type=float, metavar="RATE",
                       help=_key("initial learning rate (AdamW)", "training.learning_rate",
                                 "1e-2 for equivariant, else 2e-3"))
    train.add_argument("--dtype", choices=_choices("training.dtype"),
                       help=_key("precision of training", "training.dtype"))
    train.add_argument("--seed", type=int, help=_key("random seed", "seed"))
    train.add_argument("--threads", type=int,
                       help=_key("torch CPU threads", "training.threads",
                                 "OMP_NUM_THREADS, else by the batch's atoms"))
    train.add_argument("--ensemble", type=int, metavar="M",
                       help=_key("train a deep ensemble of M members (epistemic uncertainty)",
                                 "training.ensemble"))
    train.add_argument("--bootstrap", action="store_true",
                       help=_key("ensemble members train on bootstrap resamples of the data",
                                 "training.bootstrap"))
    train.add_argument("--aleatoric", action="store_true",
                       help=_key("add a variance head that learns the label noise (NLL)",
                                 "training.aleatoric"))
    train.add_argument("--long-range", choices=_choices("model.long_range"),
                       help=_key("add to the local model: learned charges and their Coulomb "
                                 "energy, damped C6/r⁶ dispersion from learned atomic volumes, "
                                 "or both", "model.long_range"))
    train.add_argument("--dispersion-correction", choices=_choices("model.dispersion_correction"),
                       help=_key("labels computed without dispersion: add standard "
                                 "DFT-D3(BJ)/D4 (simple-dftd3/dftd4) to the model's predictions "
                                 "(needs --xc)", "model.dispersion_correction"))
    train.add_argument("--xc", metavar="FUNCTIONAL",
                       help=_key("the labels' DFT functional, for --dispersion-correction "
                                 "(pbe, ...)", "model.xc_functional"))
    train.add_argument("--last-layer", choices=[c for c in _choices("training.last_layer")
                                                if c != "off"],
                       help=_key("bpnn: last-layer (LLPR) epistemic σ fitted after training; "
                                 "force σ from sampled last layers (heads) or, cheaper, per atom "
                                 "from its local energy (local)", "training.last_layer"))
    train.add_argument("--device", choices=_choices("training.device"),
                       help=_key("where to train (auto: the GPU when there is one)",
                                 "training.device"))
    train.add_argument("--out", help=_key("output folder; DIR/model is the trained potential",
                                          "out"))
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="set any config key (repeatable), e.g. --set training.patience=50 "
                            "--set model.hidden=[32,32]; VALUE is read as YAML; keys as in "
                            "mlpot.config.RunConfig (data, model, training, seed, out); the "
                            "flags above win over --set")
    train.set_defaults(run=_train)

    ensemble = commands.add_parser(
        "ensemble", help="one ensemble from models trained apart (any kinds: bpnn beside "
                         "SchNet, PaiNN, equivariant), σ recalibrated on --valid")
    ensemble.add_argument("models", nargs="+", help="model or ensemble folders (same "
                                                    "elements and cutoff)")
    ensemble.add_argument("--out", required=True, help="the ensemble's folder")
    ensemble.add_argument("--valid", help="labelled file (extxyz, ASE db) to fit the σ "
                                          "scales on: data none of the members trained on")
    ensemble.set_defaults(run=_ensemble)

    evaluate = commands.add_parser("eval", help="errors of a model on a labelled file")
    evaluate.add_argument("model", help="a model or ensemble folder")
    evaluate.add_argument("file", help="labelled structures (extxyz, ASE db, npz, mlpot .h5)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--energy-key", default="energy",
                          help="info key of the reference energy (eV)")
    evaluate.add_argument("--forces-key", default="forces",
                          help="arrays key of the reference forces (eV/Å)")
    evaluate.add_argument("--select", metavar="QUERY",
                          help="ASE databases: which rows (an ase.db query, e.g. one level)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=64, help="frames per forward pass")
    evaluate.add_argument("--threads", type=int,
                          help="torch CPU threads (default: OMP_NUM_THREADS, else by the "
                               "batch's atoms)")
    evaluate.add_argument(
        "--write", metavar="OUT.xyz",
        help="also write every frame with its predictions (extxyz, like MACE's eval_configs): "
             "the reference labels keep their keys; predictions go to info MLPOT_energy (eV), "
             "MLPOT_stress (Voigt, eV/Å³, periodic frames), MLPOT_energy_std[_epistemic|"
             "_aleatoric] and arrays MLPOT_forces (eV/Å), MLPOT_forces_std[...] where the model "
             "predicts σ. A Δ-model's labels and predictions are differences to its baseline")
    evaluate.set_defaults(run=_eval)

    md = commands.add_parser("md", help="molecular dynamics with a model (ASE)")
    md.add_argument("model", help="a model or ensemble folder")
    md.add_argument("structure", help="any file ASE reads")
    md.add_argument("--frame", default="0", help="which frame of STRUCTURE (ASE index)")
    md.add_argument("--steps", type=int, default=1000, help="MD steps")
    md.add_argument("--dt", type=float, default=0.5, help="time step, fs")
    md.add_argument("--temperature", type=float, default=300.0, help="K")
    md.add_argument("--ensemble", choices=["nve", "langevin", "nvt", "npt"], default="nve",
                    help="nve: velocity Verlet; langevin; nvt: --thermostat; npt: MTK barostat "
                         "+ Nosé–Hoover chain (periodic cells)")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    md.add_argument("--thermostat", choices=["bussi", "nose-hoover"], default="bussi",
                    help="nvt: Bussi velocity rescaling (canonical for any system size) or a "
                         "Nosé–Hoover chain")
    md.add_argument("--tdamp", type=float, help="nvt/npt thermostat time, fs (default 100 dt)")
    md.add_argument("--pressure", type=float, default=1e-4,
                    help="npt: external pressure, GPa (default 1 bar)")
    md.add_argument("--pdamp", type=float, help="npt barostat time, fs (default 1000 dt)")
    md.add_argument("--barostat", choices=["isotropic", "full"], default="isotropic",
                    help="npt: the volume alone, or the cell's shape too")
    md.add_argument("--interval", type=int, default=10, help="write every N steps")
    md.add_argument("--seed", type=int, default=0, help="random seed (velocities, noise)")
    md.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                    help="precision the model runs in")
    md.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                    help="where the model runs (auto: cuda when a GPU is present)")
    md.add_argument("--min-distance", type=float, default=0.6,
                    help="stop (exit 3) when two atoms come closer, Å; 0 disables")
    md.add_argument("--fragment-distance", type=float,
                    help="molecules: stop (exit 3) when a piece comes farther than this from "
                         "the rest, Å (default: the model's cutoff); 0 disables")
    md.add_argument("--max-temperature", type=float,
                    help="stop (exit 5) above this temperature, K (default max(3 T, "
                         "T + 5000 K)); 0 disables")
    md.add_argument("--max-energy-drift", type=float,
                    help="nve/nvt/npt: stop (exit 5) when the conserved energy moves more "
                         "than this, eV/atom (default 0.05); 0 disables")
    md.add_argument("--max-force-sigma", type=float,
                    help="ensembles: threshold, eV/Å, on the largest atom's epistemic force "
                         "σ norm |σ_i| (≈ √3 × the per-component σ); mlpot eval and the "
                         "training summary report its typical value as the largest atomic "
                         "force σ (see --on-uncertain)")
    md.add_argument("--on-uncertain", choices=["stop", "flag"], default="stop",
                    help="stop (exit 4) or only log the steps beyond --max-force-sigma")
    md.add_argument("--threads", type=int, help="torch CPU threads (default: OMP_NUM_THREADS, "
                                                 "else 1 below 500 atoms, else all cores)")
    md.add_argument("--out", default="md.traj", help="trajectory file (ASE .traj)")
    md.add_argument("--log", help="energy log (default: OUT with .log)")
    md.set_defaults(run=_md)

    label = commands.add_parser("label", help="reference labels with PySCF, xTB or an ASE "
                                              "calculator, on Dask workers, into an ASE db")
    label.add_argument("structures", help="structures to label (any format ASE reads; "
                                          "info charge/spin respected)")
    label.add_argument("--engine", choices=["pyscf", "xtb", "ase"], required=True,
                       help="reference engine")
    label.add_argument("--method", help="pyscf: hf, mp2, ccsd, ccsd(t) or a DFT functional; "
                                        "xtb: GFN2-xTB (default) or GFN1-xTB")
    label.add_argument("--basis", help="pyscf basis set (default sto-3g)")
    label.add_argument("--forces", choices=["auto", "analytic", "none", "fd"], default="auto",
                       help="pyscf: analytic where available (auto), or finite differences")
    label.add_argument("--calculator", help="ase engine: module:Class")
    label.add_argument("--calculator-args", default="{}", help="ase engine: JSON keyword args")
    label.add_argument("--db", required=True, help="ASE database the labels go into")
    label.add_argument("--scheduler", help="address of a running Dask scheduler "
                                           "(default: a local cluster)")
    label.add_argument("--workers", type=_positive_int, help="local cluster worker processes")
    label.add_argument("--threads", type=int, default=1, help="pyscf threads per label")
    label.add_argument("--retry-failed", action="store_true",
                       help="label again what is stored as failed")
    label.set_defaults(run=_label)

    learn = commands.add_parser("learn", help="active learning: label, train an ensemble, "
                                              "explore, select uncertain structures, repeat")
    learn.add_argument("config", help="YAML (mlpot.config.LearnConfig); resumes if OUT has "
                                      "state.json")
    learn.set_defaults(run=_learn)

    ledger = commands.add_parser("report", help="cost ledger of a label database (and model)")
    ledger.add_argument("db", help="label database (ASE db of `mlpot label`)")
    ledger.add_argument("--model", help="a model folder: its cost per prediction and speed-up")
    ledger.add_argument("--json", action="store_true", help="print one JSON object")
    ledger.set_defaults(run=_report)

    data = commands.add_parser("data", help="data sets: convert to mlpot's on-disk format")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    convert = data_commands.add_parser(
        "convert", help="extxyz / ASE db / npz files → one HDF5 file that training streams "
                        "from (data larger than memory)")
    convert.add_argument("paths", nargs="+", metavar="FILE",
                         help="input files (read, validated and written frame by frame), "
                              "then the output OUT.h5 (or .hdf5)")
    convert.add_argument("--energy-key", default="energy",
                         help="info key of the reference energy (eV)")
    convert.add_argument("--forces-key", default="forces",
                         help="arrays key of the reference forces (eV/Å)")
    convert.add_argument("--db-select", "--select", help="ASE databases: an ase.db query "
                                                         "choosing rows (e.g. one level)")
    convert.add_argument("--progress-every", type=_positive_int, default=10_000, metavar="N",
                         help="a progress line on stderr every N frames")
    convert.set_defaults(run=_data_convert)

    export = commands.add_parser(
        "export", help="a model as a self-contained torch.export program (.pt2): energy and "
                       "forces (and stress) from positions and a neighbour list")
    export.add_argument("model", help="a model folder (single potential)")
    export.add_argument("out", help="output .pt2 file")
    export.add_argument("--stress", action="store_true", help="also return the stress")
    export.add_argument("--dtype", choices=["float32", "float64"],
                        help="convert the model first (default: as saved)")
    export.add_argument("--aoti", action="store_true",
                        help="compile ahead of time (AOTInductor, needs a C++ compiler; minutes): "
                             "a package with a shared library for this machine, much faster")
    export.add_argument("--lammps", action="store_true",
                        help="compile (AOTInductor) the per-rank program of LAMMPS' pair_style "
                             "mlpot (plugin: bash scripts/lammps.sh); bpnn and linear models")
    export.set_defaults(run=_export)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except MlpotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # full disk, read-only file system, permissions, ...
        print(f"error: {_os_error_message(error)}", file=sys.stderr)
        return 2


def _os_error_message(error: OSError) -> str:
    """One line naming the file and the system's reason (``path: No space left on device``)."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    names = str(error.filename) + (f" → {error.filename2}" if error.filename2 else "")
    return f"{names}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
