"""Error metrics of a potential on labelled frames, in meV/atom and meV/Å."""

from __future__ import annotations

import numpy as np
import torch

from mlpot import keys
from mlpot.data.records import Frame


def predict(potential, frames: list[Frame], batch_size: int = 64, forces: bool = True,
            progress: bool = False) -> dict[str, list[np.ndarray]]:
    """Energies (eV) and forces (eV/Å) of every frame, in frame order; also the epistemic σ
    ("energy_std", "forces_std") where the potential predicts them (ensembles)."""
    from tqdm.auto import tqdm

    was_training = potential.training
    potential.eval()
    energies, force_list, energy_std, force_std = [], [], [], []
    starts = range(0, len(frames), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
        chunk = frames[start:start + batch_size]
        device = potential.e0.device
        batch = {key: value.to(device) for key, value in potential.batch(chunk).items()}
        out = potential(batch, forces=forces)
        energies.append(out[keys.ENERGY].detach().double().numpy())
        if keys.ENERGY_STD in out:
            energy_std.append(out[keys.ENERGY_STD].detach().double().numpy())
        if forces:
            split = np.cumsum([len(f) for f in chunk])[:-1]
            force_list += np.split(out[keys.FORCES].detach().double().numpy(), split)
            if keys.FORCES_STD in out:
                force_std += np.split(out[keys.FORCES_STD].detach().double().numpy(), split)
    potential.train(was_training)
    predicted = {"energy": list(np.concatenate(energies)), "forces": force_list}
    if energy_std:
        predicted.update(energy_std=list(np.concatenate(energy_std)), forces_std=force_std)
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
