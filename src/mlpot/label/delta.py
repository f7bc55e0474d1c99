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


TRUSTED_CALCULATORS_VARIABLE = "MLPOT_TRUSTED_CALCULATORS"
# ASE calculators that run in-process, start no program and take no commands
SAFE_ASE_CALCULATORS = frozenset({
    "ase.calculators.emt:EMT", "ase.calculators.lj:LennardJones",
    "ase.calculators.morse:MorsePotential", "ase.calculators.tip3p:TIP3P",
    "ase.calculators.tip4p:TIP4P"})


def baseline_engine(model_path: str | Path):
    """The baseline engine a saved Δ-model (or Δ-ensemble) needs, or None.

    A model folder must not make mlpot import arbitrary code: an ASE baseline it names is
    used only if it is one of :data:`SAFE_ASE_CALCULATORS`, or is
    listed (``module:Class``, comma-separated) in the environment variable
    ``MLPOT_TRUSTED_CALCULATORS``. Anything else raises ModelFileError."""
    from mlpot.errors import ModelFileError
    from mlpot.uncertainty.ensemble import saved_metadata

    baseline = saved_metadata(model_path).get("baseline")
    if baseline is None:
        return None
    where = f"{model_path}: metadata field 'baseline'"
    if not isinstance(baseline, dict):
        raise ModelFileError(f"{where} must be an object, not {baseline!r}"[:300])
    if baseline.get("engine") == "ase":
        _check_trusted_calculator(baseline.get("method"), where)
        if not isinstance(baseline.get("arguments", {}), dict):
            raise ModelFileError(f"{where}: 'arguments' must be an object")
    try:
        return engine_for(baseline)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{where}: {error}") from error


def _check_trusted_calculator(name, where: str) -> None:
    """Raise ModelFileError unless ``name`` (module:Class) may be imported for a model file."""
    import os

    from mlpot.errors import ModelFileError

    trusted = {entry.strip() for entry in os.environ.get(TRUSTED_CALCULATORS_VARIABLE,
                                                         "").split(",") if entry.strip()}
    if name not in SAFE_ASE_CALCULATORS and name not in trusted:
        raise ModelFileError(
            f"{where}: calculator {name!r} is not one of ASE's in-process calculators "
            f"{sorted(SAFE_ASE_CALCULATORS)}; a model file cannot make mlpot import other code "
            f"(if you trust it, add it to {TRUSTED_CALCULATORS_VARIABLE})"[:500])


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
