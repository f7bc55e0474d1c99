"""Error metrics of a potential on labelled frames, in meV/atom and meV/Å."""

from __future__ import annotations

import numpy as np
import torch

from mlpot import keys
from mlpot.data.batch import to_device
from mlpot.data.records import Frame


SIGMA_KEYS = {keys.ENERGY_STD: False, keys.ENERGY_STD_EPISTEMIC: False,
              keys.ENERGY_STD_ALEATORIC: False, keys.FORCES_STD: True,
              keys.FORCES_STD_EPISTEMIC: True, keys.FORCES_STD_ALEATORIC: True}  # per atom?


def predict(potential, frames: list[Frame], batch_size: int = 64, forces: bool = True,
            progress: bool = False) -> dict[str, list[np.ndarray]]:
    """Energies (eV) and forces (eV/Å) of every frame, in frame order; also σ where the
    potential predicts it: "energy_std" (total), "energy_std_epistemic" (ensembles),
    "energy_std_aleatoric" (variance heads), and the same for "forces_…" (eV, eV/Å)."""
    from tqdm.auto import tqdm

    was_training = potential.training
    potential.eval()
    energies, force_list = [], []
    sigmas = {key: [] for key in SIGMA_KEYS}
    starts = range(0, len(frames), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
        chunk = list(frames[start:start + batch_size])  # read once (on-disk frames)
        batch = to_device(potential.batch(chunk), potential.e0.device)
        out = potential(batch, forces=forces)
        energies.append(out[keys.ENERGY].detach().double().numpy())
        split = np.cumsum([len(f) for f in chunk])[:-1]
        if forces:
            force_list += np.split(out[keys.FORCES].detach().double().numpy(), split)
        for key, per_atom in SIGMA_KEYS.items():
            if key in out:
                values = out[key].detach().double().numpy()
                sigmas[key] += np.split(values, split) if per_atom else list(values)
    potential.train(was_training)
    predicted = {"energy": list(np.concatenate(energies)), "forces": force_list}
    predicted.update({key: values for key, values in sigmas.items() if values})
    return predicted


def error_metrics(frames: list[Frame], predicted: dict) -> dict[str, float]:
    """Energy MAE/RMSE per atom (meV/atom) and force MAE/RMSE per component (meV/Å)."""
    n = np.array([len(f) for f in frames])
    reference = np.array([f.energy for f in frames])
    energy_error = (np.asarray(predicted["energy"]) - reference) / n * 1000.0
    result = {"n_structures": len(frames),
              "energy_mae": float(np.mean(np.abs(energy_error))),
              "energy_rmse": float(np.sqrt(np.mean(energy_error**2)))}
    with_forces = [k for k, f in enumerate(frames) if f.forces is not None]
    if with_forces and predicted.get("forces"):
        error = np.concatenate([(predicted["forces"][k] - frames[k].forces).ravel()
                                for k in with_forces]) * 1000.0
        result.update(force_mae=float(np.mean(np.abs(error))),
                      force_rmse=float(np.sqrt(np.mean(error**2))),
                      n_structures_with_forces=len(with_forces))
    else:
        result.update(force_mae=None, force_rmse=None, n_structures_with_forces=0)
    return result


def evaluate(potential, frames: list[Frame], batch_size: int = 64,
             progress: bool = False) -> tuple[dict[str, float], dict]:
    """(metrics, predictions) of ``potential`` on labelled ``frames``."""
    with torch.enable_grad():
        predicted = predict(potential, frames, batch_size=batch_size, progress=progress)
    return error_metrics(frames, predicted), predicted
