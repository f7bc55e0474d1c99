#!/usr/bin/env python
"""Per-frame force errors of a compiled NequIP model (the peer side of
benchmarks/worst_frames.py), run in NequIP's venv:

    OMP_NUM_THREADS=1 .peers/nequip/bin/python benchmarks/peers/nequip_worst_frames.py \
        benchmarks/out/compare/acac/nequip/snapshots/snap_15min.nequip.pt2 \
        --test examples/acac/test_MD_600K.xyz [--frames 390 201 10 318 398]

Prints the force RMSE, the five worst frames (per-frame force RMSE, meV/Å), their share of
the mean squared error, and the per-frame errors of ``--frames`` (e.g. bpnn's worst ones).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from ase.io import read

from nequip_run import make_calculator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--test", required=True)
    parser.add_argument("--frames", type=int, nargs="*", default=[390, 201, 10, 318, 398])
    args = parser.parse_args()
    torch.set_num_threads(1)
    calculator = make_calculator(args.model)
    errors = []
    for atoms in read(args.test, ":"):
        reference = atoms.get_forces().copy()
        atoms.calc = calculator
        errors.append(np.sqrt(np.mean((atoms.get_forces() - reference) ** 2)) * 1000)
    errors = np.array(errors)
    worst = np.argsort(-errors)[:5]
    print(f"force RMSE {np.sqrt(np.mean(errors**2)):.1f} meV/Å; worst frames "
          + ", ".join(f"{k} ({errors[k]:.0f})" for k in worst)
          + f"; their share of the MSE {np.sum(errors[worst]**2) / np.sum(errors**2):.2f}; "
          + "frames asked for: " + ", ".join(f"{k} ({errors[k]:.0f})" for k in args.frames))


if __name__ == "__main__":
    main()
