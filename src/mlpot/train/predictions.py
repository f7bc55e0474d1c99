"""Per-frame predictions written beside the reference labels (extxyz), as MACE's
``eval_configs`` does: the labels keep their keys, the predictions take prefixed ones."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from mlpot.data.records import Frame
from mlpot.train.metrics import SIGMA_KEYS

PREFIX = "MLPOT_"


class PredictionWriter:
    """Writes frames with their predictions to an extxyz file, chunk by chunk, atomically:
    the file appears (or replaces an old one) only when the ``with`` block ends without error.

    Per frame: info ``{energy_key}`` (eV), arrays ``{forces_key}`` (eV/Å), info ``stress``
    (Voigt xx yy zz yz xz xy, eV/Å³) where the frame has them; info ``MLPOT_energy``, arrays
    ``MLPOT_forces``, info ``MLPOT_stress`` (Voigt, periodic frames) and, where the model
    predicts them, info ``MLPOT_energy_std[_epistemic|_aleatoric]`` (eV) and arrays
    ``MLPOT_forces_std[_epistemic|_aleatoric]`` (eV/Å).
    """

    def __init__(self, path: str | Path, energy_key: str = "energy", forces_key: str = "forces",
                 prefix: str = PREFIX):
        self.path = Path(path)
        self.energy_key, self.forces_key, self.prefix = energy_key, forces_key, prefix
        self.frames = 0

    def __enter__(self) -> PredictionWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                         suffix=".tmp")
        self._handle = os.fdopen(fd, "w")
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._handle.close()
        if kind is None:
            os.replace(self._tmp, self.path)
        else:
            Path(self._tmp).unlink(missing_ok=True)

    def add(self, frames: Sequence[Frame], predicted: dict) -> None:
        """Append ``frames`` with ``predicted`` (one chunk of
        :func:`mlpot.train.metrics.predict_chunks`)."""
        images = [self._atoms(k, frame, predicted) for k, frame in enumerate(frames)]
        ase.io.write(self._handle, images, format="extxyz")
        self.frames += len(images)

    def _atoms(self, k: int, frame: Frame, predicted: dict):
        atoms = frame.to_atoms()
        if frame.config_type is not None:
            atoms.info["config_type"] = frame.config_type
        if frame.energy is not None:
            atoms.info[self.energy_key] = frame.energy
        if frame.forces is not None:
            atoms.arrays[self.forces_key] = frame.forces
        if frame.stress is not None:
            atoms.info["stress"] = full_3x3_to_voigt_6_stress(frame.stress)
        p = self.prefix
        atoms.info[p + "energy"] = float(predicted["energy"][k])
        if predicted.get("forces"):
            atoms.arrays[p + "forces"] = np.asarray(predicted["forces"][k])
        stress = (predicted.get("stress") or [None] * (k + 1))[k]
        if stress is not None:
            atoms.info[p + "stress"] = full_3x3_to_voigt_6_stress(stress)
        for key, per_atom in SIGMA_KEYS.items():
            if key in predicted:
                if per_atom:
                    atoms.arrays[p + key] = np.asarray(predicted[key][k])
                else:
                    atoms.info[p + key] = float(predicted[key][k])
        return atoms
