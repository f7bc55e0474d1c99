#!/usr/bin/env python
"""Exported programs against the eager model: ms per energy+forces call, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_speed.py [--kinds bpnn,schnet] \
        [--aoti] [--out benchmarks/out/export_speed]

For each model kind (default size, cutoff 5 Å; bpnn with a 3.5 Å angular cutoff as in the
scaling benchmark; untrained weights with fitted statistics — the cost does not depend on
the weights), float32, on one acac molecule (15 atoms) and a 192-atom periodic water box:
the eager model through MlpotCalculator (skin neighbour list), the exported program through
ExportedCalculator (a fresh neighbour list per call) and the program alone (neighbour list
built once, outside the timing), and with ``--aoti`` the program compiled ahead of time by
AOTInductor (``torch._inductor.aoti_compile_and_package``, needs a C++ compiler), alone.
Median of 30 calls on slightly moved positions. Prints a Markdown table; writes OUT.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read
from long_range_cost import water_box

from mlpot.config import config_from_dict
from mlpot.data.records import Frame, read_frames
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.export import ExportedCalculator, ExportedPotential, export_potential
from mlpot.train.run import build_potential, fit_statistics

ROOT = Path(__file__).resolve().parents[1]
E0 = {"H": -13.6, "C": -1027.0, "O": -2038.0}


def median_ms(call, repeats: int = 30) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def calculator_ms(atoms, calculator) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(1)

    def call():
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        atoms.get_forces()
    return median_ms(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="bpnn,schnet")
    parser.add_argument("--aoti", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/export_speed"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = read_frames(ROOT / "examples/acac/train_300K.xyz")[:50]
    systems = {"acac (15 atoms)": read(ROOT / "examples/acac/test_MD_300K.xyz", index=0),
               "water box (192 atoms)": water_box(4)}
    results = []
    for kind in args.kinds.split(","):
        model = {"kind": kind}
        if kind == "bpnn":
            model["angular_cutoff"] = 3.5
        config = config_from_dict({"data": {"train": "x.xyz"}, "model": model})
        potential = build_potential(config, [1, 6, 8], E0)
        fit_statistics(potential, frames)
        potential = potential.float().eval()
        started = time.perf_counter()
        path = export_potential(potential, out / f"{kind}.pt2")
        export_seconds = time.perf_counter() - started
        program = ExportedPotential(path)
        compiled = None
        if args.aoti:
            started = time.perf_counter()
            package = torch._inductor.aoti_compile_and_package(
                torch.export.load(path), package_path=str(out / f"{kind}_aoti.pt2"))
            aoti_seconds = time.perf_counter() - started
            compiled = torch._inductor.aoti_load_package(package)
        for name, atoms in systems.items():
            frame = Frame(numbers=atoms.numbers, positions=atoms.positions,
                          cell=np.asarray(atoms.cell), pbc=np.asarray(atoms.pbc))
            inputs = program.inputs(frame)
            row = {"kind": kind, "system": name, "export_s": export_seconds,
                   "eager_calculator_ms": calculator_ms(atoms, MlpotCalculator(potential)),
                   "exported_calculator_ms": calculator_ms(atoms, ExportedCalculator(path)),
                   "exported_program_ms": median_ms(lambda: program.program(*inputs))}
            if compiled is not None:
                row["aoti_program_ms"] = median_ms(lambda: compiled(*inputs))
                row["aoti_compile_s"] = aoti_seconds
                reference = program.program(*inputs)
                row["aoti_max_force_difference"] = float(
                    (compiled(*inputs)[1] - reference[1]).abs().max())
            results.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    columns = ["eager_calculator_ms", "exported_calculator_ms", "exported_program_ms"] + (
        ["aoti_program_ms"] if args.aoti else [])
    print("| model | system | " + " | ".join(columns) + " |")
    print("|---" * (2 + len(columns)) + "|")
    for row in results:
        print(f"| {row['kind']} | {row['system']} | "
              + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
