#!/usr/bin/env python
"""Where one training step's time goes (issue 19, item 4): batch building, forward (energy and
forces with create_graph), loss, backward, optimizer + EMA; then torch.profiler's top
operators of a few steps.

    .venv/bin/python benchmarks/train_step_profile.py --model equivariant --size medium \
        [--train ../shared/data/acac/train_300K.xyz] [--batch-size 8] [--steps 20]

One thread (OMP_NUM_THREADS=1 unless set), float32, an untrained model with the statistics
fitted on the frames (as ``mlpot train`` does). Medians over ``--steps`` steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from common import SHARED_DATA  # noqa: E402
from mlpot.config import config_from_dict  # noqa: E402
from mlpot.data.batch import GraphCache  # noqa: E402
from mlpot.data.dataset import elements_of, reference_energies  # noqa: E402
from mlpot.data.records import read_frames  # noqa: E402
from mlpot.train.loss import EnergyForceLoss  # noqa: E402
from mlpot.train.run import build_potential, fit_statistics  # noqa: E402

DEFAULT_TRAIN = SHARED_DATA / "acac" / "train_300K.xyz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="equivariant")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--train", default=str(DEFAULT_TRAIN))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    frames = read_frames(args.train)[:args.batch_size * args.steps]
    config = config_from_dict({"data": {"train": args.train},
                               "model": {"kind": args.model, "size": args.size}})
    elements = elements_of(frames)
    e0, _ = reference_energies(frames, elements, [])
    potential = build_potential(config, elements, e0)
    fit_statistics(potential, frames)
    potential = potential.float().train()
    graphs = GraphCache(frames, potential.model.cutoff, potential.model.angular_cutoff)
    loss_fn = EnergyForceLoss(0.001, 0.03, 0.001, 0.01, 0.02)
    optimizer = torch.optim.AdamW(potential.parameters(), lr=1e-3)
    ema = torch.optim.swa_utils.AveragedModel(
        potential, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99), use_buffers=True)
    n_params = sum(p.numel() for p in potential.parameters())
    parts = {"batch": [], "forward": [], "loss": [], "backward": [], "optimizer+ema": []}

    def step(k: int, record: bool) -> None:
        index = list(range(k * args.batch_size, (k + 1) * args.batch_size))
        clock = [time.perf_counter()]
        batch = graphs.batch(index, dtype=torch.float32)
        clock.append(time.perf_counter())
        prediction = potential(batch, forces=True, create_graph=True)
        clock.append(time.perf_counter())
        loss, _ = loss_fn(prediction, batch)
        clock.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(potential.parameters(), 10.0)
        optimizer.step()
        ema.update_parameters(potential)
        clock.append(time.perf_counter())
        if record:
            for name, start, end in zip(parts, clock, clock[1:]):
                parts[name].append(1000 * (end - start))

    step(0, False)  # warm-up
    for k in range(1, args.steps):
        step(k, True)
    total = sum(statistics.median(v) for v in parts.values())
    atoms = sum(len(f.numbers) for f in frames[:args.batch_size])
    print(f"{args.model} ({args.size}), {n_params} parameters, batch {args.batch_size} "
          f"({atoms} atoms), threads {torch.get_num_threads()}: {total:.1f} ms per step, "
          f"{1000 * args.batch_size / total:.0f} structures/s")
    for name, values in parts.items():
        median = statistics.median(values)
        print(f"  {name:14s} {median:7.1f} ms  ({100 * median / total:4.1f} %)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(1, min(args.steps, 6)):
            step(k, False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
