"""Why symmetry functions: a naive network on raw Cartesian coordinates is not invariant.

Trains a plain MLP that maps the 45 Cartesian coordinates of acetylacetone to its energy,
then compares it with a Behler–Parrinello potential on the same molecule after a rotation,
a translation and a swap of two like atoms. The physical energy is unchanged by all three;
the naive network's is not, while bpnn's is, to rounding.

    python examples/why_descriptors.py [MODEL]     # MODEL: a trained mlpot model folder
                                                   # (default runs/acac/model, else a quick linear fit)
"""

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

import mlpot
from mlpot.config import config_from_dict
from mlpot.data.records import read_frames
from mlpot.train.run import run_training

HERE = Path(__file__).parent
torch.manual_seed(0)

frames = read_frames(HERE / "acac" / "train_300K.xyz")
coords = torch.tensor(np.stack([f.positions.ravel() for f in frames]))
energies = torch.tensor([f.energy for f in frames])
mean, std = energies.mean(), energies.std()

# the naive model: E = MLP(x_1, y_1, z_1, ..., x_15, y_15, z_15)
naive = torch.nn.Sequential(torch.nn.Linear(45, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                            torch.nn.SiLU(), torch.nn.Linear(64, 1)).double()
optimizer = torch.optim.Adam(naive.parameters(), lr=1e-3)
for step in range(2000):
    optimizer.zero_grad()
    loss = ((naive(coords).squeeze(1) - (energies - mean) / std) ** 2).mean()
    loss.backward()
    optimizer.step()
print(f"naive MLP trained on {len(frames)} energies (train RMSE "
      f"{float(loss.detach().sqrt() * std) * 1000 / 15:.1f} meV/atom)")


def naive_energy(positions: np.ndarray) -> float:
    with torch.no_grad():
        return float(naive(torch.tensor(positions.ravel())[None]) * std + mean)


model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "runs" / "acac" / "model"
if not model_path.exists():
    print(f"{model_path} not found: fitting a quick model (run scripts/example.sh for bpnn)")
    config = config_from_dict({
        "data": {"train": str(HERE / "acac" / "train_300K.xyz"),
                 "isolated_atoms": str(HERE / "acac" / "isolated_atoms.xyz")},
        "model": {"kind": "linear", "n_radial": 8, "n_angular_eta": 2},
        "out": str(HERE.parent / "runs" / "why_descriptors")})
    run_training(config, progress=False)
    model_path = Path(config.out) / "model"
calculator = mlpot.Calculator(model_path)


def descriptor_energy(atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy()


atoms = frames[0].to_atoms()
hydrogens = [i for i, z in enumerate(atoms.numbers) if z == 1]
swapped = atoms.copy()
order = list(range(len(atoms)))
order[hydrogens[0]], order[hydrogens[1]] = order[hydrogens[1]], order[hydrogens[0]]
swapped = swapped[order]
rotated = atoms.copy()
rotated.positions = Rotation.from_euler("zyx", [40, 25, 70], degrees=True).apply(
    atoms.positions - atoms.positions.mean(0)) + atoms.positions.mean(0)
translated = atoms.copy()
translated.positions += [1.5, -2.0, 0.7]

reference_naive = naive_energy(atoms.positions)
reference_model = descriptor_energy(atoms)
print(f"\nenergy change from the original structure (meV); model: {model_path}")
print(f"{'transformation':<28}{'naive MLP':>14}{'mlpot':>14}")
for name, variant in [("rotation (40°, 25°, 70°)", rotated), ("translation", translated),
                      (f"swap H{hydrogens[0]} <-> H{hydrogens[1]}", swapped)]:
    d_naive = (naive_energy(variant.positions) - reference_naive) * 1000
    d_model = (descriptor_energy(variant) - reference_model) * 1000
    print(f"{name:<28}{d_naive:>14.3f}{d_model:>14.2e}")
print("(0 means below the float64 resolution of a ~9391 eV total energy, about 2e-9 meV)")
