"""Error metrics of a potential on labelled frames: energies in meV/atom, forces in meV/Å,
stresses in eV/Å³ and GPa."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from ase.units import GPa

from mlpot import keys
from mlpot.data.batch import to_device
from mlpot.data.records import Frame


SIGMA_KEYS = {keys.ENERGY_STD: False, keys.ENERGY_STD_EPISTEMIC: False,
              keys.ENERGY_STD_ALEATORIC: False, keys.FORCES_STD: True,
              keys.FORCES_STD_EPISTEMIC: True, keys.FORCES_STD_ALEATORIC: True}  # per atom?


def predict_chunks(potential, frames: Sequence[Frame], batch_size: int = 64,
                   forces: bool = True, progress: bool = False, stress: bool | None = False
                   ) -> Iterator[tuple[list[Frame], dict[str, list[np.ndarray]]]]:
    """(chunk, predictions) for ``batch_size`` frames at a time, in frame order: what
    :func:`predict` returns for that chunk. On-disk frames are read chunk by chunk, so a data
    set larger than memory can be scored without holding it. ``stress``: see :func:`predict`;
    None predicts it only in chunks where some frame carries a reference stress."""
    from mlpot.progress import bar as tqdm

    was_training = potential.training
    potential.eval()
    try:
        starts = range(0, len(frames), batch_size)
        for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
            chunk = list(frames[start:start + batch_size])  # read once (on-disk frames)
            periodic = [bool(np.all(f.pbc)) for f in chunk]
            with_stress = any(periodic) and (
                stress or (stress is None and any(f.stress is not None for f in chunk)))
            batch = to_device(potential.batch(chunk), potential.e0.device)
            out = potential(batch, forces=forces, stress=with_stress)
            split = np.cumsum([len(f) for f in chunk])[:-1]
            predicted = {"energy": list(out[keys.ENERGY].detach().double().numpy())}
            if stress is not False:  # a (3, 3) array per periodic frame, None for the others
                values = (out[keys.STRESS].detach().double().numpy() if with_stress
                          else [None] * len(chunk))
                predicted["stress"] = [value if p else None for value, p in zip(values, periodic)]
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
            progress: bool = False, stress: bool = False) -> dict[str, list[np.ndarray]]:
    """Energies (eV) and forces (eV/Å) of every frame, in frame order; also σ where the
    potential predicts it: "energy_std" (total), "energy_std_epistemic" (ensembles),
    "energy_std_aleatoric" (variance heads), and the same for "forces_…" (eV, eV/Å). With
    ``stress``, "stress": the (3, 3) stress (eV/Å³, ASE's sign) of every frame periodic in all
    three directions, None for the others."""
    predicted = {"energy": [], "forces": []}
    for _, chunk_predicted in predict_chunks(potential, frames, batch_size, forces, progress,
                                             stress):
        _extend(predicted, chunk_predicted)
    return predicted


def _extend(predicted: dict, chunk_predicted: dict) -> None:
    for key, values in chunk_predicted.items():
        predicted.setdefault(key, []).extend(values)


class ErrorSums:
    """Running sums of energy, force and stress errors, chunk by chunk; :meth:`metrics` gives
    what :func:`error_metrics` gives for all chunks together."""

    def __init__(self):
        self.n_structures = self.n_with_forces = self.n_components = 0
        self.energy_abs = self.energy_sq = self.force_abs = self.force_sq = 0.0
        self.n_with_stress = 0
        self.stress_abs = self.stress_sq = 0.0  # over the 9 components of each 3×3, eV/Å³

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
        pairs = [(f.stress, p) for f, p in zip(frames, predicted.get("stress") or [])
                 if f.stress is not None and p is not None]
        if pairs:
            error = np.concatenate([(p - s).ravel() for s, p in pairs])  # eV/Å³
            self.n_with_stress += len(pairs)
            self.stress_abs += float(np.sum(np.abs(error)))
            self.stress_sq += float(np.sum(error**2))

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
        if self.n_with_stress:  # only where the data carry stress (periodic frames)
            n = 9 * self.n_with_stress
            mae, rmse = self.stress_abs / n, float(np.sqrt(self.stress_sq / n))
            result.update(stress_mae=mae, stress_rmse=rmse, stress_mae_gpa=mae / GPa,
                          stress_rmse_gpa=rmse / GPa, n_structures_with_stress=self.n_with_stress)
        return result


def error_metrics(frames: Sequence[Frame], predicted: dict) -> dict[str, float]:
    """Energy MAE/RMSE per atom (meV/atom), force MAE/RMSE per component (meV/Å) and, where
    frames carry a stress and ``predicted`` has one, stress MAE/RMSE over the 9 components of
    the 3×3 tensor ("stress_mae", "stress_rmse" in eV/Å³; "…_gpa" in GPa)."""
    sums = ErrorSums()
    sums.add(frames, predicted)
    return sums.metrics()


def evaluate(potential, frames: Sequence[Frame], batch_size: int = 64,
             progress: bool = False, keep: bool = True, stress: bool | None = None,
             on_chunk: Callable[[list[Frame], dict], None] | None = None
             ) -> tuple[dict[str, float], dict | None]:
    """(metrics, predictions) of ``potential`` on labelled ``frames``. Stress is predicted
    (and scored) where frames carry one; with ``stress=True`` for every periodic frame. With
    ``keep=False`` the predictions are not kept (None): memory stays flat however many frames
    there are. ``on_chunk(frames, predicted)`` sees each chunk's predictions (e.g. to write
    them, :class:`mlpot.train.predictions.PredictionWriter`)."""
    sums, predicted = ErrorSums(), ({"energy": [], "forces": []} if keep else None)
    with torch.enable_grad():
        for chunk, chunk_predicted in predict_chunks(potential, frames, batch_size,
                                                     progress=progress, stress=stress):
            sums.add(chunk, chunk_predicted)
            if on_chunk is not None:
                on_chunk(chunk, chunk_predicted)
            if keep:
                _extend(predicted, chunk_predicted)
    return sums.metrics(), predicted
