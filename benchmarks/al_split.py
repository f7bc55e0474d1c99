#!/usr/bin/env python
"""Split an active_learning_xtb.py run's test force RMSE by regime, and count hot labels.

    .venv/bin/python benchmarks/al_split.py benchmarks/out/al_xtb_rare [--random 80,160,320]
        [--iterations 2,5,6,10] [--hot 40] [--name al_pool]

For the ``mixed`` / ``diverse`` / ``rare`` / ``rare_large`` (``--hot 160``) scenarios: the
test set's first half is 300 K, its second half 1000 K, and the pool's last ``--hot``
structures are the 1000 K ones. Scores the random-sampling models and the active-learning
iterations given (force RMSE per half, meV/Å) and counts the hot pool structures in each
one's labels. Writes OUT/split_NAME.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ase.io import read

from common import write_json
from mlpot.data.records import read_frames
from mlpot.train.metrics import evaluate
from mlpot.uncertainty.ensemble import load_model


def force_rmse_by_half(model: Path, test) -> dict:
    """Force RMSE (meV/Å) of the model on the test set's first and second half."""
    potential, half = load_model(model), len(test) // 2
    return {regime: evaluate(potential, frames, keep=False)[0]["force_rmse"]
            for regime, frames in (("300K", test[:half]), ("1000K", test[half:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the --out folder of active_learning_xtb.py")
    parser.add_argument("--random", default="80,160,320", help="random-sampling sizes")
    parser.add_argument("--iterations", default="2,5,6,10", help="active-learning iterations")
    parser.add_argument("--hot", type=int, default=40, help="hot structures at the pool's end")
    parser.add_argument("--name", default="al_pool", help="folder of the active-learning run")
    args = parser.parse_args()
    out = Path(args.out)
    test, pool = read_frames(out / "test.xyz"), read(out / "pool.xyz", ":")
    hot_keys = {atoms.positions.round(6).tobytes() for atoms in pool[-args.hot:]}

    def hot_in(path: Path) -> int:
        return sum(atoms.positions.round(6).tobytes() in hot_keys for atoms in read(path, ":"))

    split = {}
    for size in (int(s) for s in args.random.split(",")):
        split[f"random_{size}"] = {**force_rmse_by_half(out / f"random_{size}" / "model", test),
                                   "hot": hot_in(out / f"random_{size}.xyz")}
    run = out / args.name
    wanted = {int(k) for k in args.iterations.split(",")}
    history = json.loads((run / "state.json").read_text())["history"]
    hot = hot_in(out / "al_start.xyz")  # iteration k trains on the start and iterations ≤ k
    for k in range(1, max(wanted) + 1):
        hot += hot_in(run / f"iter_{k:02d}" / "selected.xyz")
        if k in wanted:
            split[f"active_{history[k]['labels']}"] = {
                **force_rmse_by_half(run / f"iter_{k:02d}" / "train" / "model", test), "hot": hot}
    write_json(out / f"split_{args.name}.json", split)
    print(json.dumps(split, indent=1))


if __name__ == "__main__":
    main()
