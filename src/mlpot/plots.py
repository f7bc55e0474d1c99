"""Figures of a run: parity of energies and forces, learning curves (PNG, matplotlib Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlpot.files import atomic_path  # noqa: E402


def save_figure(fig, path) -> None:
    """``fig.savefig`` (120 dpi, format from the suffix) written atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120)


def parity(data: dict, predictions: dict, path: Path) -> Path:
    """Predicted vs reference energy per atom (meV/atom, centred) and force components (eV/Å)."""
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, predicted in predictions.items():
        frames = data["valid"] if name == "valid" else data[f"test:{name}"]
        n = np.array([len(f) for f in frames])
        ref = np.array([f.energy for f in frames]) / n
        pred = np.asarray(predicted["energy"]) / n
        offset = ref.mean()
        ax_e.scatter(1000 * (ref - offset), 1000 * (pred - offset), s=6, label=name, alpha=0.6)
        with_forces = [k for k, f in enumerate(frames) if f.forces is not None]
        if with_forces and predicted.get("forces"):
            f_ref = np.concatenate([frames[k].forces.ravel() for k in with_forces])
            f_pred = np.concatenate([predicted["forces"][k].ravel() for k in with_forces])
            ax_f.scatter(f_ref, f_pred, s=2, label=name, alpha=0.4)
    for ax, title in ((ax_e, "energy − mean (meV/atom)"), (ax_f, "force components (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def learning_curve(log_csv: Path, path: Path) -> Path:
    """Validation energy and force RMSE against training minutes, from ``log.csv``."""
    with open(log_csv) as handle:
        rows = list(csv.DictReader(handle))
    minutes = [float(r["minutes"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(minutes, [float(r["valid_energy_rmse"]) for r in rows], label="energy (meV/atom)")
    if rows and rows[0].get("valid_force_rmse") not in (None, ""):
        ax.plot(minutes, [float(r["valid_force_rmse"]) for r in rows], label="forces (meV/Å)")
    ax.set_yscale("log")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("validation RMSE")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def calibration(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Calibration curves: observed fraction of errors inside the central Gaussian interval of
    each confidence p against p, one line per data set ({name: (expected, observed)});
    the diagonal is perfect calibration, below it σ is too small."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    for name, (expected, observed) in curves.items():
        ax.plot(expected, observed, label=name)
    ax.set(xlabel="expected fraction (confidence p)", ylabel="observed fraction",
           xlim=(0, 1), ylim=(0, 1), title="force uncertainty calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)
