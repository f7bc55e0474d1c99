"""Per-element reference energies when isolated atoms cover only some elements (e.g. an
isolated ion at the data's level of theory): those are kept, the rest is fitted."""

import numpy as np
import pytest

from mlpot.data.dataset import reference_energies
from mlpot.data.records import Frame

E0 = {1: -13.6, 8: -2040.0, 11: -4410.0}


def _frame(numbers, energy):
    rng = np.random.default_rng(len(numbers))
    return Frame(numbers=np.array(numbers), positions=rng.normal(size=(len(numbers), 3)) * 3,
                 cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool), energy=energy)


def test_isolated_atoms_for_some_elements_and_a_fit_for_the_rest():
    """Na from its isolated frame (e.g. Na⁺ at the data's level); H and O, never isolated,
    from the energies that leaves: molecules whose energies are not sums of free atoms."""
    per_atom = {1: E0[1] + 0.3, 8: E0[8] - 0.5, 11: E0[11] + 1.25}
    frames = [_frame(numbers, sum(per_atom[z] for z in numbers))
              for numbers in ([8, 1, 1, 11], [8, 1, 1], [8, 8, 1, 1, 1, 1, 11], [8, 1])]
    e0, source = reference_energies(frames, [1, 8, 11], [_frame([11], per_atom[11])])
    assert e0["Na"] == per_atom[11]
    assert e0["H"] == pytest.approx(per_atom[1], abs=1e-9)
    assert e0["O"] == pytest.approx(per_atom[8], abs=1e-9)
    assert "isolated atoms (Na)" in source and "least-squares fit (H, O)" in source


def test_full_coverage_and_none_behave_as_before():
    frames = [_frame([8, 1, 1], 2 * E0[1] + E0[8]), _frame([8, 1], E0[1] + E0[8])]
    e0, source = reference_energies(frames, [1, 8], [_frame([1], E0[1]), _frame([8], E0[8])])
    assert e0 == {"H": E0[1], "O": E0[8]} and source == "isolated atoms"
    e0, source = reference_energies(frames, [1, 8])
    assert e0["H"] == pytest.approx(E0[1]) and e0["O"] == pytest.approx(E0[8])
    assert source == "least-squares fit"
