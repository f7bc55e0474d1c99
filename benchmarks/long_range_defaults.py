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
- ``fragments+dipoles``: the default with the reference dipoles kept (what they add);
- ``fragments, no prior``, ``structure, no prior``: without the loss's charge-excess prior
  (``training.sigma_charge_excess`` 10⁶ e), what the prior does for each scheme;
- methane dimer (MP2/cc-pVDZ): ``dispersion`` (``--long-range dispersion``, volumes pinned to
  D4 by default) and ``dispersion, no pin`` (``training.sigma_volume`` 10⁶), and for both
  the molecular C6 the learned volumes give to molecules never trained on (hydrocarbons;
  references from dipole oscillator strengths) beside methane's.

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

import common
from common import ROOT, write_json
from long_range_demo import interaction_curve
from mlpot.data.records import frame_from_atoms

DATA = ROOT / "examples" / "long_range"
OUT = common.OUT / "long_range_defaults"
RESULTS = common.RESULTS / "long_range_defaults"
COULOMB = ("local", "fragments", "structure", "none")
SYSTEMS = {"na_water": COULOMB, "cl_water": COULOMB, "water_dimer": COULOMB,
           "methane_dimer": ("local", "dispersion", "dispersion, no pin")}
NO_PRIOR = {"sigma_charge_excess": 1e6}  # the charge-excess prior switched off
# name: (model settings, training settings) that differ from the defaults
VARIANTS = {"local": ({"long_range": "none"}, {}),
            "fragments": ({"long_range": "coulomb"}, {}),
            "structure": ({"long_range": "coulomb", "charge_neutrality": "structure"}, {}),
            "none": ({"long_range": "coulomb", "charge_neutrality": "none"}, {}),
            "fragments+dipoles": ({"long_range": "coulomb"}, {}),
            "fragments, no prior": ({"long_range": "coulomb"}, NO_PRIOR),
            "structure, no prior": ({"long_range": "coulomb", "charge_neutrality": "structure"},
                                    NO_PRIOR),
            "dispersion": ({"long_range": "dispersion"}, {}),
            "dispersion, no pin": ({"long_range": "dispersion"}, {"sigma_volume": 1e6})}
# molecular C6 (Hartree·bohr⁶) from dipole oscillator strength distributions (Meath et al.,
# as collected by Tkatchenko & Scheffler, PRL 102, 073005 (2009)): methane is trained on, the
# others are not
DOSD_C6 = {"CH4": 129.6, "C2H2": 204.1, "C2H4": 300.2, "C2H6": 381.8, "C3H8": 768.1,
           "C6H6": 1723.0}
CUTOFF = 5.0  # mlpot's default, Å


def run_folder(system: str, variant: str, seed: int) -> Path:
    name = variant.replace(", ", "_").replace(" ", "_")
    return OUT / system / (name if seed == 0 else f"{name}_seed{seed}")


def training_files(system: str, dipoles: bool) -> tuple[Path, Path]:
    """(train, valid): the system's training frames, without their reference dipoles unless
    ``dipoles``; validation is 5 % of the dimers (the isolated fragments all stay in train:
    the interaction energy needs their energies)."""
    tag = "_dipoles" if dipoles else ""
    paths = OUT / system / f"train{tag}.xyz", OUT / system / f"valid{tag}.xyz"
    if not paths[0].exists():
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        frames = read(DATA / f"{system}_train.xyz", index=":")
        if not dipoles:  # extxyz puts a frame's dipole into its calculator's results
            for atoms in frames:
                atoms.info.pop("dipole", None)
                if atoms.calc is not None:
                    atoms.calc.results.pop("dipole", None)
        dimers = [k for k, atoms in enumerate(frames) if atoms.info["config_type"] != "fragment"]
        valid = set(np.random.default_rng(0).choice(dimers, len(frames) // 20, replace=False))
        write(paths[0], [a for k, a in enumerate(frames) if k not in valid], format="extxyz")
        write(paths[1], [a for k, a in enumerate(frames) if k in valid], format="extxyz")
    return paths


def train(system: str, variant: str, epochs: int, seed: int) -> Path:
    """Train one variant with `mlpot train` (a subprocess, as a user would); the model path."""
    out = run_folder(system, variant, seed)
    if (out / "model").exists():
        return out / "model"
    train_file, valid_file = training_files(system, variant.endswith("+dipoles"))
    config = {"data": {"train": str(train_file), "valid": str(valid_file)},
              "model": dict(VARIANTS[variant][0]),
              # the default's cosine schedule, over epochs instead of the default 10 minutes
              "training": {"max_minutes": None, "max_epochs": epochs, "lr_schedule": "cosine",
                           "threads": 1, **VARIANTS[variant][1]},
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
    axis.set_title(f"{system}: trained on ≤ 6 Å, E and F only", fontsize=10)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(system: str, models: dict[str, Path], plot_file: Path) -> dict:
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
        plot(system, curves, plot_file.with_name(f"{plot_file.stem}_{scan}.png"))
    c6 = {name: molecular_c6(model) for name, model in models.items()
          if VARIANTS[name][0]["long_range"] in ("dispersion", "both")}
    if c6:
        report["molecular_c6"] = {"reference": DOSD_C6, **c6}
    return report


def molecular_c6(model_dir: Path) -> dict[str, float]:
    """Σ_ij C6_ij (Hartree·bohr⁶) of each DOSD_C6 molecule with itself, from the model's
    learned volume ratios (ASE's geometries)."""
    import torch
    from ase.build import molecule
    from ase.units import Bohr, Hartree

    from mlpot.serialize import load

    potential = load(model_dir).double().eval()
    result = {}
    for name in DOSD_C6:
        atoms = molecule(name)
        frame = frame_from_atoms(atoms, source=name, index=0)
        v = potential.dispersion.volume_ratios(potential.batch([frame]))
        n = len(atoms)
        i, j = (torch.as_tensor(a.ravel()) for a in np.meshgrid(range(n), range(n),
                                                                indexing="ij"))
        c6 = potential.dispersion.pair_c6(v, torch.as_tensor(atoms.numbers), i, j)
        result[name] = float(c6.detach().sum()) / (Hartree * Bohr**6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--only", choices=list(SYSTEMS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: the system's own set (SYSTEMS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "" if args.seed == 0 else f"_seed{args.seed}"
    summary_file = RESULTS / f"summary{tag}.json"
    for system in SYSTEMS:
        if args.only and system != args.only:
            continue
        if not (DATA / f"{system}_train.xyz").exists():
            print(f"{system}: no training data (examples/long_range/make_reference.py)")
            continue
        for variant in args.variants or SYSTEMS[system]:
            train(system, variant, args.epochs, args.seed)
        models = {v: run_folder(system, v, args.seed) / "model" for v in VARIANTS
                  if (run_folder(system, v, args.seed) / "model").exists()}  # earlier runs too
        entry = {"epochs": args.epochs, "seed": args.seed,
                 **evaluate(system, models, RESULTS / f"{system}{tag}.png")}
        # read again just before writing: runs of other systems may have written meanwhile
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        summary[system] = entry
        write_json(summary_file, summary)
        for scan, result in entry.items():
            if scan == "molecular_c6":
                print(f"\n{system}: molecular C6 (Hartree·bohr⁶)")
                for molecule_name in DOSD_C6:
                    print(f"  {molecule_name:5s} " + "  ".join(
                        f"{name} {values[molecule_name]:8.1f}" for name, values in result.items()))
            if scan in ("epochs", "seed", "molecular_c6"):
                continue
            print(f"\n{system} ({scan}): mean |interaction| over 8–30 Å "
                  f"{result['mean_abs_interaction_8_30_meV']:.2f} meV")
            for name, v in result["variants"].items():
                print(f"  {name:18s} mean |error| 8–30 Å {v['mean_abs_error_8_30_meV']:8.2f} meV"
                      f" ({v['relative_8_30']:6.1%}); beats local beyond {CUTOFF:g} Å at every "
                      f"distance: {v['beats_local_at_every_distance_beyond_cutoff']}")


if __name__ == "__main__":
    main()
