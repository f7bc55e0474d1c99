"""The cost ledger: what the labels in a database cost, and what a model's prediction costs.

CPU-hours per level come from the ``cpu_seconds`` each label recorded (failed labels count:
they were paid for). A model's cost per prediction is the wall time of one energy+forces call
on one structure (one thread), and the speed-up is the mean CPU seconds of a successful label
over that time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from mlpot.label.store import LabelStore


def ledger(db: str | Path) -> list[dict]:
    """Per level: labels, failed, CPU-hours, wall-hours, mean CPU s per successful label."""
    groups = defaultdict(list)
    for row in LabelStore(db).rows():
        if "level" in row:
            groups[row.level].append(row)
    result = []
    for level, rows in sorted(groups.items()):
        ok = [r.cpu_seconds for r in rows if not r.failed]
        result.append({"level": level, "labels": len(rows),
                       "failed": sum(bool(r.failed) for r in rows),
                       "cpu_hours": sum(r.cpu_seconds for r in rows) / 3600,
                       "wall_hours": sum(r.wall_seconds for r in rows) / 3600,
                       "cpu_seconds_per_label": float(np.mean(ok)) if ok else None,
                       "atoms_per_structure": float(np.mean([r.natoms for r in rows]))})
    return result


def seconds_per_prediction(model, structures, repeats: int = 20) -> float:
    """Median wall seconds of one energy+forces call on one structure (torch on one thread)."""
    import torch

    from mlpot.data.records import frame_from_atoms

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frames = [frame_from_atoms(a, source="<ledger>", index=k)
                  for k, a in enumerate(structures)]
        times = []
        for k in range(repeats + 2):
            frame = frames[k % len(frames)]
            started = time.perf_counter()
            model(model.batch([frame]), forces=True)
            times.append(time.perf_counter() - started)
        return float(np.median(times[2:]))
    finally:
        torch.set_num_threads(threads)


def report(db: str | Path, model=None) -> dict:
    """The ledger of ``db`` and, with a model, its cost per prediction and speed-ups."""
    result = {"db": str(db), "levels": ledger(db)}
    if model is not None:
        rows = [r for r in LabelStore(db).rows(failed=False)][:10]
        if rows:
            seconds = seconds_per_prediction(model, [r.toatoms() for r in rows])
            result["model_seconds_per_prediction"] = seconds
            for level in result["levels"]:
                if level["cpu_seconds_per_label"]:
                    level["speedup"] = level["cpu_seconds_per_label"] / seconds
    return result
