"""Where one MD step's time goes: neighbour graph, batch, model (energy + forces), results.

The steps of ``MlpotCalculator.calculate`` timed one by one (with ``torch.cuda.synchronize``
after each on a GPU) on a periodic water box (untrained bpnn medium, as benchmarks/scaling.py),
median of ``--repeats`` steps on slightly moved positions, then torch.profiler's top
operators of one more step. For comparison, "graph+batch on CPU" is the same graph filtered
and its triplets built with numpy on the CPU, collated and moved to the device (the
calculator's path before the skin list kept its pairs on the model's device).

    python benchmarks/step_profile.py [--side 23] [--device cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from long_range_cost import water_box
from mlpot.config import config_from_dict
from mlpot.data.batch import to_device
from mlpot.data.records import frame_from_atoms
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.neighbors import SkinNeighborList
from mlpot.train.run import build_potential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--angular-cutoff", type=float, default=3.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    atoms = water_box(args.side)
    config = config_from_dict({"data": {"train": "unused.xyz"},
                               "model": {"kind": "bpnn", "size": "medium",
                                         "angular_cutoff": args.angular_cutoff}})
    potential = build_potential(config, [1, 8], {"H": 0.0, "O": 0.0}).eval()
    calculator = MlpotCalculator(potential, dtype=args.dtype, device=args.device)
    atoms.calc = calculator
    atoms.get_forces()
    rng = np.random.default_rng(0)
    on_cpu = SkinNeighborList(calculator.neighbors.cutoff, calculator.neighbors.angular_cutoff,
                              calculator.neighbors.skin)  # numpy arrays

    def step(compare: bool = True) -> dict[str, float]:
        """One calculator step in parts (ms); ``compare``: then the old CPU graph path."""
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        marks = [time.perf_counter()]
        frame = frame_from_atoms(atoms, source="<atoms>", index=0)
        frame.energy = frame.forces = frame.stress = None
        graph = calculator.neighbors(frame.positions, frame.cell, frame.pbc, frame.numbers)
        sync()
        marks.append(time.perf_counter())
        batch = to_device(calculator.potential.batch([frame], dtype=calculator.dtype,
                                                     graphs=[graph]), calculator.device)
        sync()
        marks.append(time.perf_counter())
        out = calculator.potential(batch, forces=True, stress=False, create_graph=False)
        sync()
        marks.append(time.perf_counter())
        out["forces"].detach().cpu().numpy()
        marks.append(time.perf_counter())
        if not compare:
            return dict(zip(("graph", "batch", "model", "to numpy"), np.diff(marks) * 1e3))
        graph = on_cpu(frame.positions, frame.cell, frame.pbc, frame.numbers)
        to_device(calculator.potential.batch([frame], dtype=calculator.dtype, graphs=[graph]),
                  calculator.device)
        sync()
        marks.append(time.perf_counter())
        return dict(zip(("graph", "batch", "model", "to numpy", "graph+batch on CPU"),
                        np.diff(marks) * 1e3))

    steps = [step() for _ in range(args.repeats)]
    medians = {name: statistics.median(s[name] for s in steps) for name in steps[0]}
    print(f"{len(atoms)} atoms on {args.device} ({args.dtype}), ms per step (median of "
          f"{args.repeats}): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
          + f"; total (without the CPU comparison) "
          f"{sum(medians.values()) - medians['graph+batch on CPU']:.1f}", flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:  # the calculator's step alone
        step(compare=False)
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=40))
    if args.device.startswith("cuda"):
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12,
                                        max_name_column_width=40))


if __name__ == "__main__":
    main()
