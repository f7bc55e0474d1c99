#!/usr/bin/env python
"""Effect of the descriptor-std floor on a bpnn trained on acac (5 minutes, one thread).

    .venv/bin/python benchmarks/std_floor.py --floor 0      # the old standardisation
    .venv/bin/python benchmarks/std_floor.py --floor 0.1    # the default since 2026-11-26

Each feature's std is floored at FLOOR × the element's median feature std
(mlpot.models.standardize.element_feature_stats). Prints E (meV/atom) and F (meV/Å) RMSE on
validation, test_MD_300K and test_MD_600K, and the largest standardised input on each test.
"""
from __future__ import annotations

import argparse
import json

from common import ACAC as DATA, OUT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floor", type=float, required=True)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", default=str(OUT / "std_floor"))
    args = parser.parse_args()
    from mlpot.config import config_from_dict
    from mlpot.models import standardize
    from mlpot.train import run

    standardize.RELATIVE_STD_FLOOR = args.floor  # read by floored_std at each call
    config = config_from_dict({
        "data": {"train": str(DATA / "train_300K.xyz"),
                 "isolated_atoms": str(DATA / "isolated_atoms.xyz"),
                 "test": [str(DATA / "test_MD_300K.xyz"), str(DATA / "test_MD_600K.xyz")]},
        "model": {"kind": "bpnn"},
        "training": {"max_minutes": args.minutes, "threads": 1},
        "seed": 0, "out": f"{args.out}/floor_{args.floor:g}"})
    summary = run.run_training(config, progress=False)
    print(json.dumps({"floor": args.floor, **{
        name: {"energy_rmse": round(m["energy_rmse"], 2), "force_rmse": round(m["force_rmse"], 1)}
        for name, m in summary["metrics"].items()}}))


if __name__ == "__main__":
    main()
