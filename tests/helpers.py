"""Small helpers shared by test modules (import as ``from helpers import …``; pytest puts
``tests/`` on the path, see pyproject's ``pythonpath``)."""

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from mlpot import keys
from mlpot.data.records import Frame, frame_from_atoms
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello
from mlpot.models.linear import LinearModel
from mlpot.models.variance import VarianceHead
from mlpot.potential import Potential

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}  # eV
ACAC_LINES = 17  # lines per acac frame (15 atoms) in the extxyz files
# the smallest bpnn that trains in a fraction of a second per epoch (training tests)
TINY_MODEL = {"kind": "bpnn", "cutoff": 4.0, "n_radial": 4, "n_angular_eta": 1,
              "zetas": [1.0], "hidden": [8]}


def acac_head(source, target, n_frames: int):
    """Write the first ``n_frames`` frames of the acac extxyz ``source`` to ``target``
    (reading all 500 or 650 takes a while); returns ``target``."""
    with open(source) as handle:
        target.write_text("".join(next(handle) for _ in range(n_frames * ACAC_LINES)))
    return target


def orthogonal(rng, proper: bool) -> np.ndarray:
    """A random 3×3 orthogonal matrix: a rotation (det +1) or a reflection (det −1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def frame(numbers, positions, cell=None) -> Frame:
    """An unlabelled frame; periodic in all directions when a cell (3×3, Å) is given."""
    periodic = cell is not None
    return Frame(numbers=np.asarray(numbers, dtype=np.int64),
                 positions=np.asarray(positions, dtype=np.float64),
                 cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64),
                 pbc=np.array([periodic] * 3))


def small_descriptor() -> SymmetryFunctions:
    return SymmetryFunctions([1, 6, 8], cutoff=4.0, angular_cutoff=3.5,
                             radial=default_radial(4.0, 4),
                             angular=default_angular(3.5, 2, (1.0, 4.0)))


def random_bpnn(seed: int, head: bool = False) -> Potential:
    """A Behler–Parrinello potential (H, C, O; float64) with random weights, descriptor
    statistics and baseline terms that differ per seed; optionally a variance head."""
    generator = torch.Generator().manual_seed(seed)
    model = BehlerParrinello(small_descriptor(), hidden=(8, 8)).double()
    n_el, n_feat = 3, model.descriptor.n_features
    model.set_statistics(torch.rand(n_el, n_feat, generator=generator, dtype=torch.float64),
                         0.5 + torch.rand(n_el, n_feat, generator=generator, dtype=torch.float64),
                         energy_scale=0.2 + 0.1 * seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.4 * torch.randn(parameter.shape, generator=generator,
                                              dtype=torch.float64))
    variance_head = None
    if head:
        torch.manual_seed(seed)
        variance_head = VarianceHead([1, 6, 8], 4.0, 0.001, 0.03).double()
    return Potential(model, E0, variance_head).double().eval()


def copper_linear_potential(seed: int = 0, n_frames: int = 40) -> tuple[Potential, Atoms]:
    """A pair-potential-like linear model (radial G2 only, 4.5 Å) fitted to ASE's EMT
    energies of rattled, strained fcc Cu cells (2×2×1 cubic, 16 atoms; also returned): smooth,
    and a periodic crystal cannot fly apart. Seeds give differently fitted models.

    (A linear model fitted to a few acac frames is not used for MD: on small grids it has
    downhill directions outside the data, and 300 K MD runs away within ~20 fs.)"""
    from mlpot.train.ridge import fit_linear

    base = bulk("Cu", "fcc", cubic=True) * (2, 2, 1)
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = base.copy()
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.rattle(0.1, seed=1000 * seed + k)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(frame_from_atoms(atoms, source="<emt>", index=k))
    e0 = {"Cu": EMT().get_potential_energy(Atoms("Cu", cell=[20.0] * 3))}
    descriptor = SymmetryFunctions([29], cutoff=4.5, radial=default_radial(4.5, 6, r_min=1.5),
                                   angular=([], [], []), cutoff_function="polynomial")
    pot = Potential(LinearModel(descriptor), e0).double().eval()
    n_fit = n_frames * 3 // 4
    fit_linear(pot, frames[:n_fit], ridge=1e-8, sigma_force=None)
    # it reproduces EMT forces on held-out cells (so the dynamics is physical)
    test = frames[n_fit:]
    out = pot(pot.batch(test), forces=True)[keys.FORCES].detach().numpy()
    reference = np.concatenate([f.forces for f in test])
    assert np.sqrt(np.mean((out - reference) ** 2)) < 0.3 * np.sqrt(np.mean(reference**2))
    return pot, base


def emt_cells(n: int, seed: int) -> list[Atoms]:
    """``n`` rattled, strained, sheared Cu–Al fcc cells (4 atoms, every neighbour an image)
    labelled by ASE's EMT: energy, forces and stress (a SinglePointCalculator each)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    cells = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.numbers[rng.choice(4, size=rng.integers(0, 3), replace=False)] = 13
        strain = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3))
        atoms.set_cell(atoms.cell.array @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.rattle(0.05, seed=seed * 1000 + k)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                      stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        cells.append(atoms)
    return cells


def assert_save_load_round_trip(potential, frames, tmp_path, names) -> None:
    """A saved and reloaded potential gives the same outputs ``names`` on ``frames``."""
    from mlpot.serialize import load, save

    loaded = load(save(potential, tmp_path / "model"))
    batch = potential.batch(frames)
    for key in names:
        torch.testing.assert_close(loaded.double()(batch, forces=False)[key],
                                   potential(batch, forces=False)[key])


def load_as_older_format(potential, tmp_path, version: int, part: str, key: str) -> Potential:
    """Save ``potential``, rewrite its config.json as a file of format ``version`` would be
    (without ``part.key``, a field that version did not record) and load it again."""
    import json

    from mlpot.serialize import load, save

    config_file = save(potential, tmp_path / "model") / "config.json"
    config = json.loads(config_file.read_text())
    del config[part][key]
    config["version"] = version
    config_file.write_text(json.dumps(config))
    return load(tmp_path / "model")
