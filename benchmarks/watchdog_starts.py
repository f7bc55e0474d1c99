"""Where does `mlpot md --max-force-sigma` stop an acac ensemble, and is the molecule then
outside its training data? Runs 300 K Langevin MD from several test_MD_300K frames with the
threshold at ``--multiple`` × the model's typical largest atomic force σ on test_MD_300K
(the quantity the watchdog compares, from `mlpot eval --json`), and reports for each start
the step it stopped at and the geometry of the enol proton there: its distance to the far O
atom and the O–O distance, beside their smallest values in the training file (a proton
half-way between the two O atoms is the H-transfer region that 300 K training data lack).
With ``--multiple 0`` there is no watchdog (any model, one network too): where does the
model's own 300 K MD take the proton? Each start also reports the smallest far O–H distance
along its trajectory.

    .venv/bin/python benchmarks/watchdog_starts.py MODEL [--frames 0,130,260,390,520]
        [--multiple 3] [--results benchmarks/results/calibration/watchdog_starts.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.io import read

from common import ACAC, OUT, RESULTS, ROOT, write_json


def proton_geometry(atoms) -> tuple[float, float]:
    """(distance of the enol H to its farther O, O–O distance), Å; the enol H is the H
    closest to any O."""
    oxygens = [i for i, z in enumerate(atoms.numbers) if z == 8]
    hydrogens = [i for i, z in enumerate(atoms.numbers) if z == 1]
    d = atoms.get_all_distances()
    h = min(hydrogens, key=lambda i: d[i, oxygens].min())
    return float(d[h, oxygens].max()), float(d[oxygens[0], oxygens[1]])


def mlpot(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlpot", *map(str, args)],
                          capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--frames", default="0,130,260,390,520")
    parser.add_argument("--multiple", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=OUT / "watchdog")
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "calibration" / "watchdog_starts.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    training = np.array([proton_geometry(a) for a in read(ACAC / "train_300K.xyz", ":")])
    model = Path(args.model).resolve()
    result = {"model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT)
                           else model.name),
              "threshold_eV_per_A": None,
              "training_far_OH_min_A": float(training[:, 0].min()),
              "training_OO_min_A": float(training[:, 1].min()), "starts": {}}
    watchdog = []
    if args.multiple > 0:
        evaluated = mlpot("eval", args.model, ACAC / "test_MD_300K.xyz", "--json")
        metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
        threshold = args.multiple * metrics["force_sigma_max_atom"] / 1000  # eV/Å
        result.update(threshold_eV_per_A=threshold,
                      force_sigma_max_atom_meV_per_A=metrics["force_sigma_max_atom"],
                      force_sigma_max_atom_p95_meV_per_A=metrics["force_sigma_max_atom_p95"])
        watchdog = ["--max-force-sigma", threshold]
    for frame in map(int, args.frames.split(",")):
        traj = args.out / f"frame{frame}.traj"
        run = mlpot("md", args.model, ACAC / "test_MD_300K.xyz", "--frame", frame,
                    "--steps", args.steps, "--ensemble", "langevin", "--temperature", 300,
                    "--interval", 2, *watchdog, "--out", traj)
        summary = json.loads(traj.with_suffix(".json").read_text())
        stopped = summary["stopped"]
        path = np.array([proton_geometry(atoms) for atoms in read(traj, ":")])
        far_oh, oo = path[-1]
        result["starts"][frame] = {"exit": run.returncode,
                                   "stopped_at_step": stopped and stopped.get("step"),
                                   "reason": stopped and stopped.get("reason"),
                                   "far_OH_at_end_A": far_oh, "OO_at_end_A": oo,
                                   "far_OH_min_along_A": float(path[:, 0].min())}
        print(f"frame {frame}: exit {run.returncode}, "
              f"{'ran all steps' if not stopped else stopped['reason']}; "
              f"last frame far O–H {far_oh:.2f} Å, O–O {oo:.2f} Å; smallest far O–H "
              f"{path[:, 0].min():.2f} Å")
    print(f"training data: far O–H ≥ {result['training_far_OH_min_A']:.2f} Å, "
          f"O–O ≥ {result['training_OO_min_A']:.2f} Å")
    write_json(args.results, result)
    print(args.results)


if __name__ == "__main__":
    main()
