"""Command line: ``mlpot train|ensemble|eval|md|label|learn|report|data|export``. It parses
arguments and calls the library; nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlpot.errors import MlpotError
from mlpot.threads import atoms_per_batch, check_threads, use_threads


def _train(args) -> int:
    from mlpot.config import config_from_dict, load_config
    from mlpot.train.run import run_training

    overrides = {}
    for flag, key in [("train", "data.train"), ("valid", "data.valid"),
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
                      ("xc", "model.xc_functional")]:
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
        if not args.train:
            raise MlpotError("give a CONFIG.yaml or --train FILE")
        config = config_from_dict({}, overrides, source="command line")
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
        force = f"{m['force_rmse']:.1f}" if m["force_rmse"] is not None else "n/a"
        print(f"  {name:>16}: energy RMSE {m['energy_rmse']:.2f} meV/atom, "
              f"force RMSE {force} meV/Å ({m['n_structures']} structures)")
    return 0


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
    frames = read_frames(args.file, energy_key=args.energy_key, forces_key=args.forces_key)
    # isolated atoms are E0 labels, not test structures (an HDF5 file stays a lazy view)
    frames = split_isolated_atoms(frames)[1] or frames
    use_threads(atoms_per_batch(frames, args.batch_size), args.threads)
    baseline = baseline_engine(args.model)
    if baseline is not None:  # a Δ-model: compare ΔE with reference − baseline (same errors)
        frames = subtract_baseline(frames, baseline)
    # σ metrics (Spearman, calibration) need every prediction; plain errors are running sums
    with_sigma = not isinstance(potential, Potential) or potential.variance_head is not None
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
        if "energy_sigma_epistemic" in metrics:
            print(f"  epistemic σ: energy {metrics['energy_sigma_epistemic']:.3f} meV/atom, "
                  f"force {metrics['force_sigma_epistemic'] or float('nan'):.2f} meV/Å; "
                  f"Spearman(σ, |error|) energy {_rounded(metrics['spearman_energy'])} "
                  f"(calibrated: {_rounded(metrics['spearman_energy_reference'])}), force per "
                  f"atom {_rounded(metrics['spearman_force'])}, per structure "
                  f"{_rounded(metrics['spearman_force_structure'])} (calibrated: "
                  f"{_rounded(metrics['spearman_force_structure_reference'])})")
    return 0


def _rounded(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _md(args) -> int:
    from ase.io import read

    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.dynamics.md import run_md

    check_threads(args.threads)
    try:
        atoms = read(args.structure, index=args.frame)
    except Exception as error:
        raise MlpotError(f"{args.structure}: cannot read frame {args.frame} ({error})") from error
    use_threads(len(atoms), args.threads)
    calculator = MlpotCalculator(args.model, dtype=args.dtype, device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(args.log) if args.log else out.with_suffix(".log")
    try:
        summary = run_md(atoms, calculator, steps=args.steps, dt=args.dt,
                         temperature=args.temperature, ensemble=args.ensemble,
                         friction=args.friction, trajectory=out, log=log,
                         interval=args.interval, seed=args.seed,
                         min_distance=args.min_distance or None,
                         max_force_sigma=args.max_force_sigma, on_uncertain=args.on_uncertain)
    except ValueError as error:
        raise MlpotError(f"{args.model}: {error}") from error
    summary_path = out.with_suffix(".json")
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"trajectory: {out}   energy log: {log}   summary: {summary_path}")
    print(f"  mean T {summary['mean_temperature_K']:.1f} K, total-energy drift "
          f"{summary['energy_drift_eV_per_atom_per_ps'] * 1000:.3f} meV/atom/ps")
    for event in summary["uncertain"]:
        print(f"uncertain: step {event['step']}, atom {event['atom']} ({event['symbol']}), "
              f"force σ {event['force_sigma']:.3f} eV/Å", file=sys.stderr)
    if summary["stopped"]:
        print(f"error: MD stopped early at {summary['stopped']['reason']}", file=sys.stderr)
        return 4 if summary["stopped"]["uncertain"] else 3
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
            print(f"σ scale ({name}) fitted on {args.valid}: {fit['scale']:.3g} (miscalibration "
                  f"area {fit['miscalibration_area_before']:.3f} → "
                  f"{fit['miscalibration_area_after']:.3f})")
    path = save_ensemble(ensemble, args.out, metadata)
    kinds = [member.model.kind for member in ensemble.members]
    print(f"{path}: ensemble of {len(kinds)} ({', '.join(kinds)})"
          + ("" if args.valid else "; σ not recalibrated (give --valid FILE)"))
    return 0


def _export(args) -> int:
    import torch

    from mlpot.export import export_potential, uses_triplets
    from mlpot.uncertainty.ensemble import load_model

    potential = load_model(args.model)
    if args.dtype:
        potential = potential.to(getattr(torch, args.dtype))
    try:
        path = export_potential(potential, args.out, stress=args.stress, aoti=args.aoti)
    except ValueError as error:
        raise MlpotError(f"{args.model}: {error}") from error
    print(f"{path}: exported ({str(potential.dtype).removeprefix('torch.')}; inputs: positions, "
          f"numbers, cell, edges within {potential.cutoff} Å"
          + (f", triplets within {potential.model.angular_cutoff} Å"
             if uses_triplets(potential) else "") + ")")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mlpot", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a potential (YAML config and/or flags)")
    train.add_argument("config", nargs="?", help="YAML run config (flags below override it)")
    train.add_argument("--train", help="training data: extxyz, ASE .db or rMD17 .npz")
    train.add_argument("--valid", help="validation file (default: 5%% of --train)")
    train.add_argument("--test", action="append", help="test file (repeatable)")
    train.add_argument("--isolated-atoms", help="single-atom frames giving E0")
    train.add_argument("--energy-key")
    train.add_argument("--forces-key")
    train.add_argument("--model", choices=["bpnn", "linear", "schnet", "painn", "equivariant"])
    train.add_argument("--size", choices=["small", "medium", "large"],
                       help="architecture preset of the model (default medium)")
    train.add_argument("--cutoff", type=float, help="Å")
    train.add_argument("--max-minutes", type=float,
                       help="time budget of the whole run, minutes (with --ensemble M the "
                            "members share it, each in turn; descriptor caching counts, "
                            "once even across --resume)")
    train.add_argument("--max-epochs", type=int)
    train.add_argument("--dtype", choices=["float32", "float64"])
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="torch CPU threads (default: "
                                                    "OMP_NUM_THREADS, else by the batch's atoms)")
    train.add_argument("--ensemble", type=int, metavar="M",
                       help="train a deep ensemble of M members (epistemic uncertainty)")
    train.add_argument("--bootstrap", action="store_true",
                       help="ensemble members train on bootstrap resamples of the data")
    train.add_argument("--aleatoric", action="store_true",
                       help="add a variance head that learns the label noise (NLL)")
    train.add_argument("--long-range", choices=["none", "coulomb", "dispersion", "both"],
                       help="add to the local model: learned charges and their Coulomb energy, "
                            "damped C6/r⁶ dispersion from learned atomic volumes, or both")
    train.add_argument("--dispersion-correction", choices=["none", "d3", "d4"],
                       help="labels computed without dispersion: add standard DFT-D3(BJ)/D4 "
                            "(simple-dftd3/dftd4) to the model's predictions (needs --xc)")
    train.add_argument("--xc", metavar="FUNCTIONAL",
                       help="the labels' DFT functional, for --dispersion-correction (pbe, ...)")
    train.add_argument("--last-layer", choices=["local", "heads"],
                       help="bpnn: last-layer (LLPR) epistemic σ fitted after training; force σ "
                            "from sampled last layers (heads) or, cheaper, per atom from its "
                            "local energy (local)")
    train.add_argument("--device", choices=["cpu", "cuda", "auto"],
                       help="where to train (default cpu; auto: the GPU when there is one)")
    train.add_argument("--out", help="output folder; DIR/model is the trained potential")
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
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
    evaluate.add_argument("model")
    evaluate.add_argument("file")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--energy-key", default="energy")
    evaluate.add_argument("--forces-key", default="forces")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--threads", type=int,
                          help="torch CPU threads (default: OMP_NUM_THREADS, else by the "
                               "batch's atoms)")
    evaluate.set_defaults(run=_eval)

    md = commands.add_parser("md", help="molecular dynamics with a model (ASE)")
    md.add_argument("model")
    md.add_argument("structure", help="any file ASE reads")
    md.add_argument("--frame", default="0", help="which frame of STRUCTURE (ASE index)")
    md.add_argument("--steps", type=int, default=1000)
    md.add_argument("--dt", type=float, default=0.5, help="time step, fs")
    md.add_argument("--temperature", type=float, default=300.0, help="K")
    md.add_argument("--ensemble", choices=["nve", "langevin"], default="nve")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    md.add_argument("--interval", type=int, default=10, help="write every N steps")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    md.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                    help="where the model runs (auto: cuda when a GPU is present)")
    md.add_argument("--min-distance", type=float, default=0.6,
                    help="stop (exit 3) when two atoms come closer, Å; 0 disables")
    md.add_argument("--max-force-sigma", type=float,
                    help="ensembles: epistemic force σ threshold, eV/Å (see --on-uncertain)")
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
    label.add_argument("--engine", choices=["pyscf", "xtb", "ase"], required=True)
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
    label.add_argument("--workers", type=int, help="local cluster worker processes")
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
    ledger.add_argument("db")
    ledger.add_argument("--model", help="a model folder: its cost per prediction and speed-up")
    ledger.add_argument("--json", action="store_true")
    ledger.set_defaults(run=_report)

    data = commands.add_parser("data", help="data sets: convert to mlpot's on-disk format")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    convert = data_commands.add_parser(
        "convert", help="extxyz / ASE db / npz files → one HDF5 file that training streams "
                        "from (data larger than memory)")
    convert.add_argument("paths", nargs="+", metavar="FILE",
                         help="input files (read, validated and written frame by frame), "
                              "then the output OUT.h5 (or .hdf5)")
    convert.add_argument("--energy-key", default="energy")
    convert.add_argument("--forces-key", default="forces")
    convert.add_argument("--db-select", help="ASE databases: an ase.db query choosing rows")
    convert.add_argument("--progress-every", type=int, default=10_000, metavar="N",
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
    export.set_defaults(run=_export)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except MlpotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
