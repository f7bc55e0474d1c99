"""ms per energy + forces call of every network kind, one CPU thread, on a molecule and a box.

Untrained models of config size medium (cost does not depend on the weights), float32: one
acac molecule (examples/acac/test_MD_300K.xyz frame 0, 15 atoms) and a periodic water box
(``--side``³ molecules at 1 g/cm³; bpnn with ``angular_cutoff`` 3.5 Å there), the graph
built once, then ``Potential.forward`` (energy and forces by autograd) timed: minimum and
median of ``--calls`` calls after one warm-up. To compare two versions of the code, run it
with each on ``PYTHONPATH`` in turn, a few rounds:

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before/src python benchmarks/forward_cost.py
    OMP_NUM_THREADS=1 python benchmarks/forward_cost.py [--side 4] [--calls 15] [--kinds ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import ACAC
from long_range_cost import water_box
from mlpot.config import config_from_dict
from mlpot.data.records import frame_from_atoms, read_frames
from mlpot.train.run import build_potential

KINDS = ("bpnn", "schnet", "painn", "equivariant")


def time_calls(potential, frame, calls: int) -> dict:
    batch = potential.batch([frame])
    potential(batch)  # warm-up
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        potential(batch)
        seconds.append(time.perf_counter() - start)
    return {"min_ms": 1e3 * min(seconds), "median_ms": 1e3 * statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4, help="water molecules per box edge")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    systems = {"acac": (read_frames(ACAC / "test_MD_300K.xyz")[0], [1, 6, 8]),
               "water": (frame_from_atoms(water_box(args.side), source="water", index=0),
                         [1, 8])}
    results = []
    for kind in args.kinds:
        for system, (frame, elements) in systems.items():
            model = {"kind": kind, "size": "medium"}
            if kind == "bpnn" and system == "water":
                model["angular_cutoff"] = 3.5
            config = config_from_dict({"data": {"train": "unused.xyz"}, "model": model})
            torch.manual_seed(0)
            potential = build_potential(config, elements, {"H": 0.0, "C": 0.0, "O": 0.0}
                                        if system == "acac" else {"H": 0.0, "O": 0.0})
            timing = time_calls(potential.float().eval(), frame, args.calls)
            results.append({"kind": kind, "system": system, "n_atoms": len(frame), **timing})
            print(f"{kind:>11} {system:>5} ({len(frame)} atoms): min {timing['min_ms']:.1f} "
                  f"median {timing['median_ms']:.1f} ms", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
