"""Error metrics of a potential on labelled frames, in meV/atom and meV/Å."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mlpot import keys
from mlpot.data.batch import to_device
from mlpot.data.records import Frame


SIGMA_KEYS = {keys.ENERGY_STD: False, keys.ENERGY_STD_EPISTEMIC: False,
              keys.ENERGY_STD_ALEATORIC: False, keys.FORCES_STD: True,
              keys.FORCES_STD_EPISTEMIC: True, keys.FORCES_STD_ALEATORIC: True}  # per atom?


def predict_chunks(potential, frames: Sequence[Frame], batch_size: int = 64,
                   forces: bool = True, progress: bool = False
                   ) -> Iterator[tuple[list[Frame], dict[str, list[np.ndarray]]]]:
    """(chunk, predictions) for ``batch_size`` frames at a time, in frame order: what
    :func:`predict` returns for that chunk. On-disk frames are read chunk by chunk, so a data
    set larger than memory can be scored without holding it."""
    from tqdm.auto import tqdm

    was_training = potential.training
    potential.eval()
    try:
        starts = range(0, len(frames), batch_size)
        for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
            chunk = list(frames[start:start + batch_size])  # read once (on-disk frames)
            batch = to_device(potential.batch(chunk), potential.e0.device)
            out = potential(batch, forces=forces)
            split = np.cumsum([len(f) for f in chunk])[:-1]
            predicted = {"energy": list(out[keys.ENERGY].detach().double().numpy())}
            if forces:
                predicted["forces"] = np.split(out[keys.FORCES].detach().double().numpy(), split)
            for key, per_atom in SIGMA_KEYS.items():
                if key in out:
                    values = out[key].detach().double().numpy()
                    predicted[key] = np.split(values, split) if per_atom else list(values)
            yield chunk, predicted
    finally:
        potential.train(was_training)


def predict(potential, frames: Sequence[Frame], batch_size: int = 64, forces: bool = True,
            progress: bool = False) -> dict[str, list[np.ndarray]]:
    """Energies (eV) and forces (eV/Å) of every frame, in frame order; also σ where the
    potential predicts it: "energy_std" (total), "energy_std_epistemic" (ensembles),
    "energy_std_aleatoric" (variance heads), and the same for "forces_…" (eV, eV/Å)."""
    predicted = {"energy": [], "forces": []}
    for _, chunk_predicted in predict_chunks(potential, frames, batch_size, forces, progress):
        _extend(predicted, chunk_predicted)
    return predicted


def _extend(predicted: dict, chunk_predicted: dict) -> None:
    for key, values in chunk_predicted.items():
        predicted.setdefault(key, []).extend(values)


class ErrorSums:
    """Running sums of energy and force errors, chunk by chunk; :meth:`metrics` gives what
    :func:`error_metrics` gives for all chunks together."""

    def __init__(self):
        self.n_structures = self.n_with_forces = self.n_components = 0
        self.energy_abs = self.energy_sq = self.force_abs = self.force_sq = 0.0

    def add(self, frames: Sequence[Frame], predicted: dict) -> None:
        n = np.array([len(f) for f in frames])
        reference = np.array([f.energy for f in frames])
        energy_error = (np.asarray(predicted["energy"]) - reference) / n * 1000.0  # meV/atom
        self.n_structures += len(frames)
        self.energy_abs += float(np.sum(np.abs(energy_error)))
        self.energy_sq += float(np.sum(energy_error**2))
        with_forces = [k for k, f in enumerate(frames) if f.forces is not None]
        if with_forces and predicted.get("forces"):
            error = np.concatenate([(predicted["forces"][k] - frames[k].forces).ravel()
                                    for k in with_forces]) * 1000.0  # meV/Å
            self.n_with_forces += len(with_forces)
            self.n_components += error.size
            self.force_abs += float(np.sum(np.abs(error)))
            self.force_sq += float(np.sum(error**2))

    def metrics(self) -> dict[str, float]:
        n = max(self.n_structures, 1)
        result = {"n_structures": self.n_structures, "energy_mae": self.energy_abs / n,
                  "energy_rmse": float(np.sqrt(self.energy_sq / n))}
        if self.n_components:
            result.update(force_mae=self.force_abs / self.n_components,
                          force_rmse=float(np.sqrt(self.force_sq / self.n_components)),
                          n_structures_with_forces=self.n_with_forces)
        else:
            result.update(force_mae=None, force_rmse=None, n_structures_with_forces=0)
        return result


def error_metrics(frames: Sequence[Frame], predicted: dict) -> dict[str, float]:
    """Energy MAE/RMSE per atom (meV/atom) and force MAE/RMSE per component (meV/Å)."""
    sums = ErrorSums()
    sums.add(frames, predicted)
    return sums.metrics()


def evaluate(potential, frames: Sequence[Frame], batch_size: int = 64,
             progress: bool = False, keep: bool = True) -> tuple[dict[str, float], dict | None]:
    """(metrics, predictions) of ``potential`` on labelled ``frames``. With ``keep=False``
    the predictions are not kept (None): memory stays flat however many frames there are."""
    sums, predicted = ErrorSums(), ({"energy": [], "forces": []} if keep else None)
    with torch.enable_grad():
        for chunk, chunk_predicted in predict_chunks(potential, frames, batch_size,
                                                     progress=progress):
            sums.add(chunk, chunk_predicted)
            if keep:
                _extend(predicted, chunk_predicted)
    return sums.metrics(), predicted
