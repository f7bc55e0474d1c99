"""Covalent coordination features: a brute-force double loop over atom pairs, the bond counts
chemistry expects, and the smooth switch to zero at the cutoff."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.data import covalent_radii

from mlpot.data.batch import collate
from mlpot.data.records import frame_from_atoms
from mlpot.descriptors.coordination import PAULING, CovalentCoordination
from mlpot.neighbors import graph_arrays


def _features(atoms, cutoff=5.0) -> np.ndarray:
    frame = frame_from_atoms(atoms, source="test", index=0)
    batch = collate([frame], [graph_arrays(frame.positions, frame.cell, frame.pbc, cutoff)],
                    dtype=torch.float64)
    return CovalentCoordination(sorted(set(atoms.numbers)), cutoff)(batch).numpy()


def test_features_equal_a_brute_force_pair_loop():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    n, cutoff = len(atoms), 5.0
    expected = np.zeros((n, 2))
    for i in range(n):
        for j in range(n):
            r = atoms.get_distance(i, j)
            if i == j or r >= cutoff:
                continue
            bond = covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]]
            x = min(max(r - (cutoff - 1.0), 0.0), 1.0)
            c = (1 - x**3 * (10 - 15 * x + 6 * x**2)) / (1 + np.exp(-16 * (4 / 3 * bond / r - 1)))
            expected[i] += [c, (PAULING[atoms.numbers[j]] - PAULING[atoms.numbers[i]]) * c]
    np.testing.assert_allclose(_features(atoms), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, carbon", [("CH4", 4), ("C2H6", 4), ("C2H4", 3), ("C2H2", 2)])
def test_carbon_counts_its_bonds(name, carbon):
    features = _features(molecule(name))
    numbers = molecule(name).numbers
    np.testing.assert_allclose(features[numbers == 6, 0], carbon, atol=0.1)
    np.testing.assert_allclose(features[numbers == 1, 0], 1.0, atol=0.05)


def test_polarity_tells_hydrogen_on_oxygen_from_hydrogen_on_carbon():
    water, methane = _features(molecule("H2O")), _features(molecule("CH4"))
    assert water[1, 1] == pytest.approx(3.44 - 2.20, abs=0.05)
    assert methane[1, 1] == pytest.approx(2.55 - 2.20, abs=0.05)


def test_the_switch_reaches_zero_at_the_cutoff():
    """Two atoms just inside and just beyond the cutoff: the count is continuous (tiny) and
    exactly zero beyond."""
    from ase import Atoms

    inside = _features(Atoms("CC", positions=[[0, 0, 0], [0, 0, 4.999]]))
    beyond = _features(Atoms("CC", positions=[[0, 0, 0], [0, 0, 5.001]]))
    assert 0 < inside[0, 0] < 1e-12 and beyond[0, 0] == 0.0
