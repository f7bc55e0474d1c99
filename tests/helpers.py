"""Small helpers shared by test modules (import as ``from helpers import …``; pytest puts
``tests/`` on the path, see pyproject's ``pythonpath``)."""

import numpy as np
import torch

from mlpot.data.records import Frame
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello
from mlpot.models.variance import VarianceHead
from mlpot.potential import Potential

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}  # eV


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


def assert_save_load_round_trip(potential, frames, tmp_path, names) -> None:
    """A saved and reloaded potential gives the same outputs ``names`` on ``frames``."""
    from mlpot.serialize import load, save

    loaded = load(save(potential, tmp_path / "model"))
    batch = potential.batch(frames)
    for key in names:
        torch.testing.assert_close(loaded.double()(batch, forces=False)[key],
                                   potential(batch, forces=False)[key])
