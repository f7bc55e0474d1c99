"""Δ-learning: a model of E_high − E_low on top of a cheap baseline engine.

Training frames come from one label database holding both levels for the same structures
(matched by structure_key): their targets are the differences of energies and forces. The
model folder records the baseline (``metadata["baseline"]``: level, engine, method, basis), so
that the ASE calculator and `mlpot eval` add the baseline engine's own energy and forces to
the model's: E = E_low(engine) + ΔE(model).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlpot.data.records import Frame, frame_from_atoms
from mlpot.errors import DataError


def delta_frames(db: str | Path, level: str, baseline: str) -> list[Frame]:
    """Frames of ``level`` in ``db`` with energies and forces minus those of ``baseline``."""
    from mlpot.label.store import LabelStore

    store = LabelStore(db)
    low = {row.structure_key: row for row in store.rows(level=baseline, failed=False)}
    frames = []
    for index, row in enumerate(store.rows(level=level, failed=False)):
        if row.structure_key not in low:
            raise DataError(f"no {baseline!r} label for this structure (row {row.id}): "
                            "label it with the baseline engine first", source=str(db),
                            frame=index, field="structure_key")
        atoms = row.toatoms()
        frame = frame_from_atoms(atoms, source=str(db), index=index)
        base = low[row.structure_key]
        frame.energy = frame.energy - base.energy
        if frame.forces is not None:
            if base.get("forces") is None:
                raise DataError(f"the {baseline!r} label has no forces", source=str(db),
                                frame=index, field="forces")
            frame.forces = frame.forces - base.forces
        frame.charge = float(row.get("charge", 0))
        frames.append(frame)
    if not frames:
        raise DataError(f"no successful {level!r} labels", source=str(db))
    return frames


def subtract_baseline(frames: list[Frame], engine) -> list[Frame]:
    """Copies of labelled ``frames`` with the engine's energies and forces subtracted."""
    import dataclasses

    result = []
    for frame in frames:
        label = engine.label(frame.to_atoms())
        if label.failed:
            raise DataError(f"baseline {engine.level} failed: {label.error}",
                            source=frame.source, frame=frame.index)
        forces = None if frame.forces is None else frame.forces - label.forces
        result.append(dataclasses.replace(frame, energy=frame.energy - label.energy,
                                          forces=forces))
    return result


def baseline_description(db: str | Path, baseline: str) -> dict:
    """What the model's metadata records of its baseline (from a row of that level)."""
    from mlpot.label.store import LabelStore

    rows = LabelStore(db).rows(level=baseline, failed=False)
    if not rows:
        raise DataError(f"no successful {baseline!r} labels", source=str(db))
    row = rows[0]
    return {"level": baseline, "engine": row.engine, "method": row.method, "basis": row.basis,
            "arguments": json.loads(row.get("arguments", "{}"))}


def baseline_engine(model_path: str | Path):
    """The baseline engine a saved Δ-model (or Δ-ensemble) needs, or None."""
    from mlpot.uncertainty.ensemble import saved_metadata

    baseline = saved_metadata(model_path).get("baseline")
    return None if baseline is None else engine_for(baseline)


def engine_for(baseline: dict):
    """Rebuild an engine from a baseline description."""
    from mlpot.label.engines import ASEEngine, PySCFEngine, XTBEngine

    kind = baseline["engine"]
    if kind == "pyscf":
        return PySCFEngine(baseline["method"], baseline["basis"])
    if kind == "xtb":
        return XTBEngine(baseline["method"])
    if kind == "ase":
        return ASEEngine(baseline["method"], baseline.get("arguments", {}))
    raise ValueError(f"unknown baseline engine {kind!r}")
