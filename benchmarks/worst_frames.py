#!/usr/bin/env python
"""Which test frames dominate a force RMSE, and how far outside the training data they lie.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/worst_frames.py MODEL [MODEL ...] \
        --test examples/acac/test_MD_600K.xyz --train examples/acac/train_300K.xyz [--top 5]

For each model: the force RMSE, the frames with the largest per-frame force RMSE, their share
of the mean squared error and the RMSE without them, and their energy errors. For the worst
frames of the first model: the atom pair (same atom indices in every frame: one molecule's MD)
whose distance lies furthest outside the range that pair spans in the training file. Prints
Markdown; writes nothing.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def pair_distances(frames) -> np.ndarray:
    """(n_frames, n_pairs) distances, Å, over the pairs i < j of the frames' common atoms."""
    i, j = np.triu_indices(len(frames[0]), 1)
    return np.stack([np.linalg.norm(f.positions[i] - f.positions[j], axis=1) for f in frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--test", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import predict
    from mlpot.uncertainty.ensemble import load_model

    test, train = read_frames(args.test), read_frames(args.train)
    print("| model | force RMSE | worst frames (force RMSE, meV/Å) | share of MSE | "
          "RMSE without them | their energy errors (meV/atom) |\n|---|---|---|---|---|---|")
    worst = None
    for path in args.models:
        with torch.enable_grad():
            predicted = predict(load_model(path), test)
        force = np.array([np.sqrt(np.mean((p - f.forces) ** 2)) * 1000
                          for p, f in zip(predicted["forces"], test)])
        energy = np.array([(p - f.energy) / len(f) * 1000
                           for p, f in zip(predicted["energy"], test)])
        order = np.argsort(-force)[:args.top]
        rest = np.delete(force, order)
        worst = order if worst is None else worst
        print(f"| {path} | {np.sqrt(np.mean(force**2)):.1f} | "
              f"{', '.join(f'{k} ({force[k]:.0f})' for k in order)} | "
              f"{np.sum(force[order]**2) / np.sum(force**2):.2f} | "
              f"{np.sqrt(np.mean(rest**2)):.1f} | "
              f"{', '.join(f'{energy[k]:+.1f}' for k in order)} |")
    train_distances = pair_distances(train)
    low, high = train_distances.min(0), train_distances.max(0)
    distances = pair_distances([test[k] for k in worst])
    i, j = np.triu_indices(len(test[0]), 1)
    print("\n| frame | pair furthest outside the training range | distance (Å) | "
          "training range (Å) |\n|---|---|---|---|")
    for k, row in zip(worst, distances):
        outside = np.maximum(low - row, row - high)
        p = int(np.argmax(outside))
        symbols = test[k].to_atoms().get_chemical_symbols()
        print(f"| {k} | {symbols[i[p]]}{i[p]}–{symbols[j[p]]}{j[p]} | {row[p]:.2f} | "
              f"{low[p]:.2f}–{high[p]:.2f} |")


if __name__ == "__main__":
    main()
