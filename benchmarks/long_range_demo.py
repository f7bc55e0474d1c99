"""Long-range demonstration: trained on short separations, predict the far interaction.

For each reference set made by examples/long_range/make_reference.py (PySCF):
Na⁺–water and Cl⁻–water (B3LYP/def2-SVP) and the methane dimer (MP2), train two bpnn
models on separations ≤ 6 Å plus the isolated fragments, with the same budget:

- local: the short-range model alone (5 Å cutoff): blind beyond its cutoff;
- hybrid: the same plus the physics term (ions: learned charges + Coulomb, trained with
  the reference dipoles, σ_μ = 0.002 e·Å: PySCF's dipoles are far more precise than that,
  and integer charges on fragments out of each other's reach, ``charge_neutrality:
  fragments``; methane: learned-volume C6 dispersion).

Then predict the interaction energy E(dimer) − Σ E(fragments) along the rigid scan
(2–30 Å) and compare with the reference: relative error per distance, the largest one
over 8–30 Å, and a plot per system (docs/long_range_<system>.png).

    python benchmarks/long_range_demo.py [--epochs 500] [--threads 1] [--only na_water]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.io import read

import common
from common import ROOT, write_json

DATA = ROOT / "examples" / "long_range"
OUT = common.OUT / "long_range"
SYSTEMS = {"na_water": "coulomb", "cl_water": "coulomb", "methane_dimer": "dispersion"}


def train(system: str, long_range: str, epochs: int, threads: int, seed: int) -> Path:
    from mlpot.config import config_from_dict
    from mlpot.train.run import run_training

    out = OUT / f"{system}_{long_range}"
    if (out / "model").exists():
        return out / "model"
    config = config_from_dict({
        "data": {"train": str(DATA / f"{system}_train.xyz"), "valid_fraction": 0.1},
        "model": {"kind": "bpnn", "size": "medium", "cutoff": 5.0, "long_range": long_range,
                  "charge_neutrality": "fragments"},
        "training": {"max_minutes": None, "max_epochs": epochs, "threads": threads,
                     "sigma_energy": 0.0005, "sigma_dipole": 0.002, "dtype": "float64"},
        "seed": seed, "out": str(out)})
    run_training(config, progress=False)
    return out / "model"


def interaction_curve(model_dir: Path | None, frames) -> tuple[np.ndarray, np.ndarray]:
    """(distances Å, interaction energies eV) of the scan frames: E(dimer) minus the
    fragments' energies, from the model (or the reference labels if ``model_dir`` is None)."""
    energies = []
    if model_dir is None:
        energies = [atoms.get_potential_energy() for atoms in frames]  # the stored labels
    else:
        from mlpot.dynamics.calculator import MlpotCalculator

        calculator = MlpotCalculator(str(model_dir))
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy())
    energies = np.array(energies)
    fragment = np.array([atoms.info["config_type"] == "fragment" for atoms in frames])
    distances = np.array([atoms.info["distance"] for atoms in frames])[~fragment]
    # the fragments' energies, as often as they make up a dimer (one methane stands for two)
    copies = len(frames[int(np.argmin(fragment))]) / sum(
        len(atoms) for atoms, is_fragment in zip(frames, fragment) if is_fragment)
    return distances, energies[~fragment] - copies * energies[fragment].sum()


def plot(system: str, distances, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, energies in curves.items():
        style = "k-" if name == "reference" else "o--"
        left.plot(distances, energies * 1e3, style, label=name, ms=3)
        far = distances >= 6.0
        right.semilogy(distances[far], np.abs(energies[far]) * 1e3, style, label=name, ms=3)
    for axis in (left, right):
        axis.axvline(6.0, color="grey", lw=0.8, ls=":")
        axis.set_xlabel("separation (Å)")
    left.set_ylabel("interaction energy (meV)")
    right.set_ylabel("|interaction energy| (meV)")
    left.set_title(f"{system}: trained on ≤ 6 Å (dotted line)")
    right.set_title("beyond the training range")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="training epochs per model "
                        "(not minutes: the comparison must not depend on machine load)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=list(SYSTEMS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    summary_file = OUT / "summary.json"  # one entry per system, kept across --only runs
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    for system, physics in SYSTEMS.items():
        if args.only and system != args.only:
            continue
        frames = read(DATA / f"{system}_curve.xyz", index=":")
        distances, reference = interaction_curve(None, frames)
        curves = {"reference": reference}
        for long_range in ("none", physics):
            model = train(system, long_range, args.epochs, args.threads, args.seed)
            curves["local" if long_range == "none" else f"hybrid ({physics})"] = \
                interaction_curve(model, frames)[1]
        far = distances >= 8.0
        summary[system] = {"distances": distances.tolist(),
                           "interaction_meV": {k: (v * 1e3).tolist() for k, v in curves.items()},
                           "max_relative_error_8_30": {}}
        print(f"\n{system}: interaction energy (meV)")
        print("   r/Å " + "".join(f"{name:>20}" for name in curves))
        for k, r in enumerate(distances):
            print(f"{r:7.1f} " + "".join(f"{curves[n][k] * 1e3:20.3f}" for n in curves))
        for name, energies in curves.items():
            if name == "reference":
                continue
            relative = np.abs(energies[far] - reference[far]) / np.abs(reference[far])
            summary[system]["max_relative_error_8_30"][name] = float(relative.max())
            print(f"  {name}: largest relative error over 8–30 Å {relative.max():.1%}")
        plot(system, distances, curves, ROOT / "docs" / f"long_range_{system}.png")
    write_json(summary_file, summary)


if __name__ == "__main__":
    main()
