"""Small helpers shared by test modules (import as ``from helpers import …``; pytest puts
``tests/`` on the path, see pyproject's ``pythonpath``)."""

import numpy as np

from mlpot.data.records import Frame


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
