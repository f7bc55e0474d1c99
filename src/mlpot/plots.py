"""Figures of a run: parity of energies, forces and stresses, learning curves (PNG,
matplotlib Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase import units  # noqa: E402

from mlpot.files import atomic_path  # noqa: E402


def save_figure(fig, path) -> None:
    """``fig.savefig`` (120 dpi, format from the suffix) written atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120)


def parity(data: dict, predictions: dict, path: Path) -> Path:
    """Parity figure of :func:`parity_figure`, saved to ``path`` (PNG)."""
    fig = parity_figure(data, predictions)
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def parity_figure(data: dict, predictions: dict):
    """Predicted vs reference: energy per atom (meV/atom; from reference and prediction alike
    the mean reference energy per atom of the same set is subtracted, so sets of different
    composition share the axes), force components (eV/Å) and, where a set's frames carry
    stress, the 9 stress components (GPa). Each set's legend entry states its RMSE and MAE.
    ``data``: {"valid": frames, "test:NAME": frames}; ``predictions``: {"valid" or NAME:
    predictions of :func:`mlpot.train.metrics.evaluate`}."""
    sets = {name: (data["valid"] if name == "valid" else data[f"test:{name}"], predicted)
            for name, predicted in predictions.items()}
    with_stress = any(_stress_pairs(frames, predicted) for frames, predicted in sets.values())
    fig, axes = plt.subplots(1, 3 if with_stress else 2, figsize=(15 if with_stress else 10, 4.5))
    for name, (frames, predicted) in sets.items():
        n = np.array([len(f) for f in frames])
        ref = np.array([f.energy for f in frames]) / n
        pred = np.asarray(predicted["energy"]) / n
        offset = ref.mean()
        axes[0].scatter(1000 * (ref - offset), 1000 * (pred - offset), s=6, alpha=0.6,
                        label=_errors(name, 1000 * (pred - ref), "meV/atom"))
        with_forces = [k for k, f in enumerate(frames) if f.forces is not None]
        if with_forces and predicted.get("forces"):
            f_ref = np.concatenate([frames[k].forces.ravel() for k in with_forces])
            f_pred = np.concatenate([predicted["forces"][k].ravel() for k in with_forces])
            axes[1].scatter(f_ref, f_pred, s=2, alpha=0.4,
                            label=_errors(name, 1000 * (f_pred - f_ref), "meV/Å"))
        pairs = _stress_pairs(frames, predicted)
        if pairs:
            s_ref = np.concatenate([s.ravel() for s, _ in pairs]) / units.GPa
            s_pred = np.concatenate([p.ravel() for _, p in pairs]) / units.GPa
            axes[2].scatter(s_ref, s_pred, s=4, alpha=0.5,
                            label=_errors(name, s_pred - s_ref, "GPa"))
    titles = ["energy per atom (meV/atom)\nminus the mean reference energy per atom of its set",
              "force components (eV/Å)", "stress components (GPa)"]
    for ax, title in zip(axes, titles):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("reference")
        ax.set_ylabel("predicted")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title="set: RMSE, MAE", title_fontsize=7)
    fig.tight_layout()
    return fig


def _errors(name: str, error: np.ndarray, unit: str) -> str:
    """Legend entry: the set's name, RMSE and MAE of ``error`` in ``unit``."""
    rmse, mae = np.sqrt(np.mean(error**2)), np.mean(np.abs(error))
    return f"{name}: RMSE {rmse:.3g}, MAE {mae:.3g} {unit}"


def _stress_pairs(frames, predicted: dict) -> list:
    """(reference, predicted) 3×3 stresses (eV/Å³) of the frames that have both."""
    return [(f.stress, p) for f, p in zip(frames, predicted.get("stress") or [])
            if f.stress is not None and p is not None]


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
