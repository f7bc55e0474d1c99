"""Long range with the defaults: trained from energies and forces alone, does the hybrid
predict the interaction beyond the cutoff?

For each system of examples/long_range/ (PySCF B3LYP/def2-SVP: Na⁺–water, Cl⁻–water, the
water dimer), train on its training file (separations ≤ 6 Å plus the isolated fragments)
with the reference dipoles removed, every setting at mlpot's default (bpnn medium, 5 Å
cutoff, float32, default σ, cosine schedule) except the budget, which is epochs (not
minutes: the comparison must not depend on the machine's load), and the validation frames,
5 % of the dimers (the isolated fragments stay in training). Variants:

- ``local``: no long-range term (blind beyond its cutoff, so it predicts 0 there);
- ``fragments``: ``--long-range coulomb``, the default charge scheme;
- ``structure``, ``none``: the same with ``model.charge_neutrality`` structure / none, the
  alternatives the default was chosen over (mlpot.physics.charges);
- ``fragments+dipoles``: the default with the reference dipoles kept (what they add).

Then predict the interaction energy E(dimer) − Σ E(fragments) on the test scans (random
orientations, ``*_orientations.xyz``, and the rigid axial scan ``*_curve.xyz`` where there is
one) and report per distance the mean |error| of every variant, and over 8–30 Å the mean
|error| relative to the mean |interaction| (target ≤ 10 %) and whether the hybrid beats the
local model at every distance beyond the cutoff.

    python benchmarks/long_range_defaults.py [--epochs 300] [--only na_water]

Writes benchmarks/results/long_range_defaults/summary.json and one plot per system.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from ase.io import read, write

from long_range_demo import interaction_curve

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "long_range"
OUT = ROOT / "benchmarks" / "out" / "long_range_defaults"
RESULTS = ROOT / "benchmarks" / "results" / "long_range_defaults"
SYSTEMS = ("na_water", "cl_water", "water_dimer")
VARIANTS = {"local": {"long_range": "none"},
            "fragments": {"long_range": "coulomb"},
            "structure": {"long_range": "coulomb", "charge_neutrality": "structure"},
            "none": {"long_range": "coulomb", "charge_neutrality": "none"},
            "fragments+dipoles": {"long_range": "coulomb"}}
CUTOFF = 5.0  # mlpot's default, Å


def training_files(system: str, dipoles: bool) -> tuple[Path, Path]:
    """(train, valid): the system's training frames, without their reference dipoles unless
    ``dipoles``; validation is 5 % of the dimers (the isolated fragments all stay in train:
    the interaction energy needs their energies)."""
    tag = "_dipoles" if dipoles else ""
    paths = OUT / system / f"train{tag}.xyz", OUT / system / f"valid{tag}.xyz"
    if not paths[0].exists():
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        frames = read(DATA / f"{system}_train.xyz", index=":")
        if not dipoles:
            for atoms in frames:
                atoms.info.pop("dipole", None)
        dimers = [k for k, atoms in enumerate(frames) if atoms.info["config_type"] != "fragment"]
        valid = set(np.random.default_rng(0).choice(dimers, len(frames) // 20, replace=False))
        write(paths[0], [a for k, a in enumerate(frames) if k not in valid], format="extxyz")
        write(paths[1], [a for k, a in enumerate(frames) if k in valid], format="extxyz")
    return paths


def train(system: str, variant: str, epochs: int, seed: int) -> Path:
    """Train one variant with `mlpot train` (a subprocess, as a user would); the model path."""
    out = OUT / system / variant
    if (out / "model").exists():
        return out / "model"
    train_file, valid_file = training_files(system, variant.endswith("+dipoles"))
    config = {"data": {"train": str(train_file), "valid": str(valid_file)},
              "model": dict(VARIANTS[variant]),
              # the default's cosine schedule, over epochs instead of the default 10 minutes
              "training": {"max_minutes": None, "max_epochs": epochs, "lr_schedule": "cosine",
                           "threads": 1},
              "seed": seed, "out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "mlpot", "train", str(out / "config.yaml")],
                   check=True, stdout=subprocess.DEVNULL)
    return out / "model"


def plot(system: str, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    distances, reference = curves["reference"]
    for name, (d, energies) in curves.items():
        if name == "reference":
            continue
        shown = d >= CUTOFF
        errors = [np.abs(energies[d == r] - reference[d == r]).mean() * 1e3
                  for r in np.unique(d[shown])]
        axis.semilogy(np.unique(d[shown]), errors, "o-", ms=3, label=name)
    magnitude = [np.abs(reference[distances == r]).mean() * 1e3
                 for r in np.unique(distances[distances >= CUTOFF])]
    axis.semilogy(np.unique(distances[distances >= CUTOFF]), magnitude, "k--",
                  label="mean |interaction|")
    axis.set_xlabel("separation (Å)")
    axis.set_ylabel("mean |error| of the interaction energy (meV)")
    axis.set_title(f"{system}: random orientations, trained on ≤ 6 Å, E and F only")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(system: str, models: dict[str, Path]) -> dict:
    """Per test scan: distances, reference and predicted interactions, and the criteria."""
    report = {}
    for scan in ("orientations", "curve"):
        path = DATA / f"{system}_{scan}.xyz"
        if not path.exists():
            continue
        frames = read(path, index=":")
        distances, reference = interaction_curve(None, frames)
        curves = {"reference": (distances, reference)}
        for name, model in models.items():
            curves[name] = (distances, interaction_curve(model, frames)[1])
        far = distances >= 8.0
        beyond = np.unique(distances[distances > CUTOFF])
        mean_interaction = float(np.abs(reference[far]).mean())
        entry = {"distances": distances.tolist(),
                 "interaction_meV": {k: (v[1] * 1e3).tolist() for k, v in curves.items()},
                 "mean_abs_interaction_8_30_meV": mean_interaction * 1e3, "variants": {}}
        local_error = {r: np.abs(reference[distances == r]).mean() for r in beyond}
        for name in models:
            error = np.abs(curves[name][1] - reference)
            per_distance = {r: float(error[distances == r].mean()) for r in beyond}
            entry["variants"][name] = {
                "mean_abs_error_8_30_meV": float(error[far].mean()) * 1e3,
                "relative_8_30": float(error[far].mean()) / mean_interaction,
                "beats_local_at_every_distance_beyond_cutoff": bool(all(
                    per_distance[r] < local_error[r] for r in beyond)),
                "mean_abs_error_by_distance_meV": {f"{r:g}": e * 1e3
                                                   for r, e in per_distance.items()}}
        report[scan] = entry
        if scan == "orientations":
            plot(system, curves, RESULTS / f"{system}.png")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--only", choices=SYSTEMS)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary_file = RESULTS / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    for system in SYSTEMS:
        if args.only and system != args.only:
            continue
        if not (DATA / f"{system}_train.xyz").exists():
            print(f"{system}: no training data (examples/long_range/make_reference.py)")
            continue
        models = {v: train(system, v, args.epochs, args.seed) for v in args.variants}
        summary[system] = {"epochs": args.epochs, **evaluate(system, models)}
        summary_file.write_text(json.dumps(summary, indent=1))
        for scan, entry in summary[system].items():
            if scan == "epochs":
                continue
            print(f"\n{system} ({scan}): mean |interaction| over 8–30 Å "
                  f"{entry['mean_abs_interaction_8_30_meV']:.2f} meV")
            for name, v in entry["variants"].items():
                print(f"  {name:18s} mean |error| 8–30 Å {v['mean_abs_error_8_30_meV']:8.2f} meV"
                      f" ({v['relative_8_30']:6.1%}); beats local beyond {CUTOFF:g} Å at every "
                      f"distance: {v['beats_local_at_every_distance_beyond_cutoff']}")


if __name__ == "__main__":
    main()
