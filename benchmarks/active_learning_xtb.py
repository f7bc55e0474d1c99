#!/usr/bin/env python
"""Active learning against random sampling on ethanol with GFN2-xTB labels.

    .venv/bin/python benchmarks/active_learning_xtb.py [--out benchmarks/out/al_xtb]
        [--sizes 10,20,40,80,160] [--minutes 0.5] [--iterations 8] [--max-new 15]

1. Reference data: xTB Langevin MD of ethanol at 600 K (ASE + tblite, 0.5 fs): a pool of
   400 snapshots (4 trajectories) and an independent test set of 200 (another trajectory).
2. Random sampling: for each size n, an ensemble (3 bpnn members, ``--minutes`` each) trains
   on n structures drawn at random from the pool; test force RMSE.
3. Active learning: `mlpot learn` starts from the first 10 random pool structures and adds at
   most ``--max-new`` per iteration, chosen by exploring at 600 K with its own ensemble
   (same members and minutes) and labelling with xTB on a local Dask cluster.
   Exploration: ``--trajectories`` Langevin runs per iteration, each ending once its
   epistemic force σ passes ``--stop-sigma``; selected: snapshots above ``--threshold``.
   With ``--from-pool`` the candidates are instead the random-sampling pool's structures
   (unlabelled), scored by the ensemble (pool-based query by committee).
Both run at once (one thread each); finished runs are reused. Writes OUT/results_NAME.json,
OUT/NAME_vs_random.png and a table.

``--scenario mixed`` instead: the pool is what cheap sampling typically gives, imbalanced —
400 snapshots of 300 K MD (4 trajectories) and 40 of 1000 K MD (one) — and the test set
weighs both regimes equally (100 snapshots of an independent 300 K and 100 of an independent
1000 K trajectory). Random sampling follows the pool's imbalance; selection by epistemic σ
(use with ``--from-pool``) can seek out the rare hot configurations. ``--scenario diverse``:
the same, but the 40 hot snapshots come from 8 short 1000 K trajectories (5 each, 25 fs
apart) and the 100 hot test snapshots from 4 others — one 500 fs trajectory's snapshots are
too alike to teach the 1000 K regime (see RESULTS.md). ``--scenario rare``: as diverse, with
the cold part four times larger (1600 snapshots from 16 trajectories), so that the 40 hot
snapshots are 2.4 % of the pool — what a long MD data set with a few rare excursions is like.
``--scenario rare_large``: rare's proportions in a pool four times larger (6400 cold, 160 hot
from 32 short trajectories), so that the rare part is not used up within the label budget.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import OUT, write_json

TEMPERATURE = 600.0  # K
REPEAT_STRIDE = 10007  # --repeat r offsets every random seed by r × this


def xtb_trajectory(steps: int, every: int, seed: int, temperature: float = TEMPERATURE):
    """Snapshots of an xTB Langevin trajectory of ethanol at ``temperature`` K, labelled
    (energy, forces)."""
    from ase import units
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tblite.ase import TBLite

    rng = np.random.default_rng(seed)
    atoms = molecule("CH3CH2OH")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature,
                        friction=0.02 / units.fs, rng=rng)
    dynamics.run(200)  # equilibrate
    frames = []
    for _ in range(steps // every):
        dynamics.run(every)
        snapshot = atoms.copy()
        snapshot.calc = SinglePointCalculator(snapshot, energy=atoms.get_potential_energy(),
                                              forces=atoms.get_forces())
        frames.append(snapshot)
    return frames


def reference_data(out: Path, scenario: str) -> tuple[Path, Path]:
    from ase.io import write

    pool, test = out / "pool.xyz", out / "test.xyz"
    if pool.exists():
        return pool, test
    if scenario == "600K":
        write(pool, [f for seed in range(4) for f in xtb_trajectory(2500, 25, seed)])
        write(test, xtb_trajectory(5000, 25, 100))
    elif scenario == "mixed":  # an imbalanced pool, a test set of both regimes alike
        write(pool, [f for seed in range(4) for f in xtb_trajectory(2500, 25, seed, 300.0)]
              + xtb_trajectory(1000, 25, 4, 1000.0))
        write(test, xtb_trajectory(2500, 25, 100, 300.0) + xtb_trajectory(2500, 25, 101, 1000.0))
    else:  # diverse: as mixed, the hot part from 8 short trajectories, tested on 4 others;
        #    rare: the same with 16 cold trajectories instead of 4; rare_large: 4× rare's pool
        cold_seeds, hot_seeds = {
            "diverse": (range(4), range(4, 12)),
            "rare": ([*range(4), *range(200, 212)], range(4, 12)),
            "rare_large": ([*range(4), *range(200, 260)], [*range(4, 12), *range(300, 324)]),
        }[scenario]
        with ProcessPoolExecutor(2) as workers:  # one xTB trajectory per task
            cold = workers.map(xtb_trajectory, *zip(*[(2500, 25, s, 300.0) for s in cold_seeds]))
            hot = workers.map(xtb_trajectory, *zip(*[(250, 50, s, 1000.0) for s in hot_seeds]))
            write(pool, [f for frames in cold for f in frames]
                  + [f for frames in hot for f in frames])
        write(test, xtb_trajectory(2500, 25, 100, 300.0)
              + [f for seed in range(101, 105) for f in xtb_trajectory(1250, 50, seed, 1000.0)])
    return pool, test


def train_random(out: Path, pool: Path, test: Path, size: int, minutes: float,
                 repeat: int = 0) -> dict:
    import yaml
    from ase.io import read, write

    run = out / f"random_{size}"
    if not (run / "metrics.json").exists():
        frames = read(pool, index=":")
        picks = np.random.default_rng(size + REPEAT_STRIDE * repeat).choice(
            len(frames), size, replace=False)
        write(out / f"random_{size}.xyz", [frames[k] for k in picks])
        config = out / f"random_{size}.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"train": str(out / f"random_{size}.xyz"), "test": [str(test)],
                     "valid_fraction": 0.1},
            "model": {"kind": "bpnn"},
            "training": {"ensemble": 3, "max_minutes": minutes, "threads": 1},
            "seed": repeat, "out": str(run)}))
        with open(out / f"random_{size}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "mlpot", "train", str(config)], check=True,
                           stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]["test"]
    return {"labels": size, "test_force_rmse": metrics["force_rmse"]}


def active(out: Path, pool: Path, test: Path, minutes: float, iterations: int,
           max_new: int, threshold: float, stop_sigma: float, trajectories: int,
           name: str, from_pool: bool, strategy: str, repeat: int = 0) -> list[dict]:
    import yaml
    from ase.io import read, write

    frames = read(pool, index=":")
    picks = np.random.default_rng(10 + REPEAT_STRIDE * repeat).choice(len(frames), 10,
                                                                       replace=False)
    start = out / "al_start.xyz"
    write(start, [frames[k] for k in picks])  # the labels are recomputed by the loop
    config = out / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "start": str(start), "test": str(test), "out": str(out / name),
        "engine": {"kind": "xtb"}, "model": {"kind": "bpnn"},
        "training": {"ensemble": 3, "max_minutes": minutes, "threads": 1},
        "explore": {"trajectories": trajectories, "temperature": TEMPERATURE, "steps": 400,
                    "interval": 10, "stop_sigma": stop_sigma,
                    "pool": str(pool) if from_pool else None},
        "select": {"force_sigma": threshold, "max_new": max_new, "min_distance": 0.02,
                   "strategy": strategy},
        "iterations": iterations, "valid_fraction": 0.1, "workers": 1, "seed": repeat}))
    with open(out / f"{name}.log", "a") as log:
        subprocess.run([sys.executable, "-m", "mlpot", "learn", str(config)], check=True,
                       stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = json.loads((out / name / "state.json").read_text())
    return [{"labels": h["labels"], "test_force_rmse": h["test_force_rmse"],
             "selected_sigma_mean": h.get("selected_sigma_mean")} for h in state["history"]]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, marker in (("random", "o-"), ("active", "s-")):
        points = results[name]
        ax.plot([p["labels"] for p in points], [p["test_force_rmse"] for p in points], marker,
                label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labelled structures (GFN2-xTB)")
    ax.set_ylabel("test force RMSE (meV/Å)")
    ax.set_title("ethanol: active learning vs random sampling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT / "al_xtb"))
    parser.add_argument("--sizes", default="10,20,40,80,160")
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=15)
    parser.add_argument("--threshold", type=float, default=0.15,
                        help="select snapshots with max epistemic force σ above this, eV/Å")
    parser.add_argument("--stop-sigma", type=float, default=0.3,
                        help="end an exploration trajectory once σ passes this, eV/Å")
    parser.add_argument("--trajectories", type=int, default=15)
    parser.add_argument("--name", default="al", help="folder of the active-learning run")
    parser.add_argument("--strategy", choices=["top", "weighted", "diverse"], default="top",
                        help="most uncertain first, drawn with probability ∝ σ, or greedy σ × "
                             "distance to the nearest labelled structure")
    parser.add_argument("--scenario",
                        choices=["600K", "mixed", "diverse", "rare", "rare_large"],
                        default="600K",
                        help="pool and test set (see above)")
    parser.add_argument("--from-pool", action="store_true",
                        help="select from the (unlabelled) random-sampling pool by σ instead "
                             "of exploring with MD")
    parser.add_argument("--repeat", type=int, default=0,
                        help="another draw: random picks, start set and training seeds "
                             "change (0 = the runs in RESULTS.md)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pool, test = reference_data(out, args.scenario)
    sizes = [int(s) for s in args.sizes.split(",")]
    with ThreadPoolExecutor(2) as executor:
        learning = executor.submit(active, out, pool, test, args.minutes, args.iterations,
                                   args.max_new, args.threshold, args.stop_sigma,
                                   args.trajectories, args.name, args.from_pool,
                                   args.strategy, args.repeat)
        random = [train_random(out, pool, test, n, args.minutes, args.repeat) for n in sizes]
        results = {"random": random, "active": learning.result()}
    results.update(scenario=args.scenario, minutes_per_member=args.minutes, members=3,
                   date=time.ctime(),
                   wall_minutes=(time.time() - started) / 60, threshold=args.threshold,
                   stop_sigma=args.stop_sigma, trajectories=args.trajectories,
                   strategy=args.strategy, repeat=args.repeat)
    write_json(out / f"results_{args.name}.json", results)
    plot(results, out / f"{args.name}_vs_random.png")
    print("| strategy | labels | test force RMSE (meV/Å) |\n|---|---|---|")
    for name in ("random", "active"):
        for p in results[name]:
            print(f"| {name} | {p['labels']} | {p['test_force_rmse']:.1f} |")


if __name__ == "__main__":
    main()
