#!/usr/bin/env python
"""A published protocol, trained as far as the epochs allow: one command, resumable.

    .venv/bin/python benchmarks/paper/run.py acac --model equivariant --epochs 500
    .venv/bin/python benchmarks/paper/run.py aspirin --model bpnn --epochs 2000
    .venv/bin/python benchmarks/paper/run.py report acac_equivariant_medium   # no training

Protocols (data from ../shared/data):

- ``acac``: BOTNet acetylacetone, train_300K split 450 train / 50 validation; RMSE on
  test_MD_300K and test_MD_600K (MACE paper, Table 3, force RMSE: MACE 5.1 / 22.4 meV/Å, NequIP 5.90 / 27.8);
- ``aspirin``, ``ethanol``: rMD17 split 01, 950 train / 50 validation drawn from
  ``rmd17_<mol>_train_01.npz``; MAE on the 1000 frames of ``rmd17_<mol>_test_01.npz``
  (MACE paper, Table 1: aspirin 2.2 meV / 6.6 meV/Å, ethanol 0.4 / 2.1);
- ``aspirin50``: the low-data regime, 50 training frames (MACE 17.0 / 43.9, NequIP 19.5 / 52.0).

Training is budgeted by epochs, not minutes (``training.max_minutes: null``; the cosine
learning rate decays over ``--epochs``), so the result does not depend on the machine's load;
``log.csv`` still records the training minutes of every epoch for the equal-time plots. The
run checkpoints every epoch: the same command continues an interrupted run (``--resume``), also
from a checkpoint committed under ``benchmarks/results/paper/``. Snapshots of the best model on
validation are kept at 10, 30, 60, 90, 120, 150 training minutes (the equal-time columns).

Writes into ``--out`` (default ``benchmarks/results/paper/<protocol>_<model>_<size>``):
``train/`` (mlpot's run folder), ``results.json`` (test errors of the final model and of every
snapshot, the published values, epochs, minutes, where the curve flattens) and ``curve.png``
(validation force RMSE against epochs and training minutes, log-log).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import RESULTS, SHARED_DATA as DATA, write_json

SNAPSHOT_MINUTES = [10, 30, 60, 90, 120, 150]

# Published errors [energy, force] as quoted in issue 19 from the MACE paper's tables (None: not
# quoted); "metric" says which: RMSE (acac, MACE Table 3) or MAE of the total energy and of
# the force components (rMD17, MACE Table 1).
PROTOCOLS = {
    "acac": dict(
        train=DATA / "acac" / "train_300K.xyz", isolated=DATA / "acac" / "isolated_atoms.xyz",
        valid_fraction=0.1, max_train=None, metric="rmse",
        tests={"test_MD_300K": DATA / "acac" / "test_MD_300K.xyz",
               "test_MD_600K": DATA / "acac" / "test_MD_600K.xyz"},
        published={"test_MD_300K": {"MACE": [None, 5.1], "NequIP": [None, 5.90]},
                   "test_MD_600K": {"MACE": [None, 22.4], "NequIP": [None, 27.8]}}),
    "aspirin": dict(
        train=DATA / "rmd17" / "rmd17_aspirin_train_01.npz", isolated=None,
        valid_fraction=0.05, max_train=None, metric="mae",
        tests={"test_01": DATA / "rmd17" / "rmd17_aspirin_test_01.npz"},
        published={"test_01": {"MACE": [2.2, 6.6], "NequIP": [2.3, 8.2], "ACE": [6.1, 17.9],
                               "PaiNN": [6.9, 16.1], "ANI": [16.6, 40.6]}}),
    "ethanol": dict(
        train=DATA / "rmd17" / "rmd17_ethanol_train_01.npz", isolated=None,
        valid_fraction=0.05, max_train=None, metric="mae",
        tests={"test_01": DATA / "rmd17" / "rmd17_ethanol_test_01.npz"},
        published={"test_01": {"MACE": [0.4, 2.1], "PaiNN": [2.7, 10.0]}}),
    "aspirin50": dict(
        train=DATA / "rmd17" / "rmd17_aspirin_train_01.npz", isolated=None,
        valid_fraction=0.05, max_train=50, metric="mae",
        tests={"test_01": DATA / "rmd17" / "rmd17_aspirin_test_01.npz"},
        published={"test_01": {"MACE": [17.0, 43.9], "NequIP": [19.5, 52.0]}}),
}


def log(message: str) -> None:
    print(f"paper: {message}", flush=True)


def write_config(protocol: dict, args, out: Path) -> Path:
    import yaml

    def relative(path: Path) -> str:  # config paths are read relative to the config's folder
        return os.path.relpath(path, out)

    config = {
        "data": {"train": relative(protocol["train"]),
                 "valid_fraction": protocol["valid_fraction"],
                 "test": [relative(path) for path in protocol["tests"].values()]},
        "model": {"kind": args.model, "size": args.size},
        "training": {"max_minutes": None, "max_epochs": args.epochs, "lr_schedule": "cosine",
                     "patience": 10 ** 6, "threads": args.threads,
                     "snapshot_minutes": SNAPSHOT_MINUTES},
        "seed": args.seed, "out": "train",
    }
    if protocol["isolated"]:
        config["data"]["isolated_atoms"] = relative(protocol["isolated"])
    if protocol["max_train"]:
        config["data"]["max_train"] = protocol["max_train"]
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train(config: Path, out: Path, threads: int, overrides: list[str]) -> int:
    """``mlpot train`` as a subprocess (continuing from the checkpoint when there is one);
    ``overrides``: its ``--set KEY=VALUE`` items."""
    command = [sys.executable, "-m", "mlpot", "train", str(config),
               *[word for item in overrides for word in ("--set", item)]]
    if (out / "train" / "checkpoint.pt").exists():
        command.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log(" ".join(command))
    with open(out / "train.log", "a") as stream:
        return subprocess.call(command, env=env, stdout=stream, stderr=subprocess.STDOUT)


def read_log(path: Path) -> list[dict]:
    with open(path) as stream:
        return [{key: float(value) if value not in ("", "None") else None
                 for key, value in row.items()} for row in csv.DictReader(stream)]


def flattening(epochs: np.ndarray, errors: np.ndarray) -> dict:
    """Where the curve flattens: the log-log slope of the running best validation force RMSE
    over the first and the last third of the epochs (0 = flat)."""
    best = np.minimum.accumulate(errors)
    n = len(best)
    if n < 9:
        return {}
    thirds = [slice(0, n // 3), slice(2 * n // 3, n)]
    slopes = [float(np.polyfit(np.log(epochs[s]), np.log(best[s]), 1)[0]) for s in thirds]
    return {"slope_first_third": round(slopes[0], 3), "slope_last_third": round(slopes[1], 3)}


def final_metrics(run: Path, tests: dict, threads: int) -> dict:
    """Test metrics of the run's final model: those ``mlpot train`` wrote to metrics.json
    when it finished (keyed by file stem), else (a run stopped early) evaluated now."""
    if (run / "metrics.json").exists():
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
        return {name: metrics[Path(path).stem] for name, path in tests.items()}
    return evaluate(run / "model", tests, threads)


def evaluate(model: Path, tests: dict, threads: int) -> dict:
    results = {}
    for name, path in tests.items():
        text = subprocess.run(
            [sys.executable, "-m", "mlpot", "eval", str(model), str(path), "--json",
             "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(text)
    return results


def summarize(metrics: dict, n_atoms: int, metric: str) -> list[float]:
    """[energy, force] in the published units: meV/atom RMSE (acac) or total-energy MAE in
    meV (rMD17), force RMSE or MAE in meV/Å."""
    if metric == "rmse":
        return [round(metrics["energy_rmse"], 3), round(metrics["force_rmse"], 2)]
    return [round(metrics["energy_mae"] * n_atoms, 3), round(metrics["force_mae"], 2)]


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.array([r["epoch"] for r in rows])
    minutes = np.array([r["minutes"] for r in rows])
    force = np.array([r["valid_force_rmse"] for r in rows])
    energy = np.array([r["valid_energy_rmse"] for r in rows])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x, label in ((axes[0], epochs, "epoch"), (axes[1], minutes, "training minutes")):
        ax.loglog(x, force, lw=0.8, label="validation force RMSE (meV/Å)")
        ax.loglog(x, energy, lw=0.8, label="validation energy RMSE (meV/atom)")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out / "curve.png", dpi=110)
    plt.close(figure)


def without_paths(value):
    """The run's config with every file path cut to its name (no machine paths in results/)."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and os.sep in value:
        return Path(value).name
    return value


def report(out: Path, protocol: dict, threads: int) -> dict:
    from mlpot.data.records import iter_frames

    run = out / "train"
    rows = read_log(run / "log.csv")
    n_atoms = len(next(iter_frames(next(iter(protocol["tests"].values())))).numbers)
    final = final_metrics(run, protocol["tests"], threads)
    snapshots = {}
    for folder in sorted((run / "snapshots").glob("model_*min"),
                         key=lambda p: float(p.name[6:-3])):
        snapshots[folder.name[6:]] = {
            name: summarize(m, n_atoms, protocol["metric"])
            for name, m in evaluate(folder, protocol["tests"], threads).items()}
    epochs = np.array([r["epoch"] for r in rows])
    force = np.array([r["valid_force_rmse"] for r in rows])
    best = int(np.argmin(force))
    result = {
        "protocol": out.name, "metric": protocol["metric"],
        "units": ("energy meV/atom RMSE, force meV/Å RMSE" if protocol["metric"] == "rmse"
                  else "energy MAE of the total energy (meV), force MAE (meV/Å)"),
        "epochs_done": int(epochs[-1]), "training_minutes": round(rows[-1]["minutes"], 1),
        "s_per_epoch": round(60 * rows[-1]["minutes"] / epochs[-1], 2),
        "best_valid": {"epoch": int(epochs[best]), "force_rmse": round(float(force[best]), 2),
                       "energy_rmse": round(rows[best]["valid_energy_rmse"], 3)},
        "curve": flattening(epochs, force),
        "final": {name: summarize(m, n_atoms, protocol["metric"]) for name, m in final.items()},
        "final_all_metrics": final, "snapshots_by_minute": snapshots,
        "published": protocol["published"],
        "config": without_paths(json.loads((run / "run.json").read_text()).get("config")),
    }
    write_json(out / "results.json", result)
    plot(rows, out, f"{out.name}: {result['epochs_done']} epochs, "
                    f"{result['training_minutes']} training minutes")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("protocol", choices=[*PROTOCOLS, "report"])
    parser.add_argument("name", nargs="?", help="with report: the folder under --root")
    parser.add_argument("--model", default="equivariant", help="mlpot model kind")
    parser.add_argument("--size", default="medium", help="size preset")
    parser.add_argument("--epochs", type=int, default=500,
                        help="epochs of the cosine schedule (the budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one core each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to mlpot train, e.g. "
                             "training.batch_size=4 (repeatable; give it again on resume)")
    parser.add_argument("--out", help="run folder (default: benchmarks/results/paper/NAME)")
    args = parser.parse_args()
    root = RESULTS / "paper"
    if args.protocol == "report":
        out = Path(args.out) if args.out else root / args.name
        protocol = PROTOCOLS[out.name.split("_")[0]]
    else:
        protocol = PROTOCOLS[args.protocol]
        out = Path(args.out) if args.out else root / f"{args.protocol}_{args.model}_{args.size}"
        out.mkdir(parents=True, exist_ok=True)
        config = write_config(protocol, args, out)
        code = train(config, out, args.threads, args.set)
        if code != 0:
            log(f"mlpot train exited {code}; see {out / 'train.log'}")
            sys.exit(code)
    result = report(out, protocol, args.threads)
    log(json.dumps({k: result[k] for k in ("epochs_done", "training_minutes", "best_valid",
                                            "curve", "final")}))


if __name__ == "__main__":
    main()
