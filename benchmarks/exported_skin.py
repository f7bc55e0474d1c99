#!/usr/bin/env python
"""Exported program's ASE calculator with and without the skin neighbour list.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exported_skin.py \
        [--program benchmarks/out/side_by_side_floor/bpnn_aoti.pt2] \
        [--structures benchmarks/out/side_by_side_floor/acac.xyz ...acac_box.xyz]

(the files inference_side_by_side.py writes). Median ms per energy+forces call over 5
interleaved rounds of 10 calls (2 warm-up per round), positions jittered by 1e-3 Å as in the
side-by-side; skin 0 searches the neighbours at every call, skin 1 Å once.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.io import read

from mlpot.export import ExportedCalculator

OUT = "benchmarks/out/side_by_side_floor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--program", default=f"{OUT}/bpnn_aoti.pt2")
    parser.add_argument("--structures", nargs="+",
                        default=[f"{OUT}/acac.xyz", f"{OUT}/acac_box.xyz"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.structures:
        atoms = read(path)
        calculators = {skin: ExportedCalculator(args.program, skin=skin) for skin in (0.0, 1.0)}
        base, rng = atoms.positions.copy(), np.random.default_rng(0)
        times = {skin: [] for skin in calculators}
        for _ in range(5):
            for skin, calculator in calculators.items():
                atoms.calc = calculator
                for k in range(12):
                    atoms.positions = base + rng.normal(scale=1e-3, size=base.shape)
                    start = time.perf_counter()
                    atoms.get_forces()
                    if k >= 2:
                        times[skin].append(time.perf_counter() - start)
        print(f"{path} ({len(atoms)} atoms): " + ", ".join(
            f"skin {skin:g} Å {np.median(t) * 1e3:.2f} ms" for skin, t in times.items())
            + f"; searches with the skin: {calculators[1.0].neighbors.searches}")


if __name__ == "__main__":
    main()
