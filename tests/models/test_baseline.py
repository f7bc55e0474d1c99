"""The per-element baseline b_Z · n_i: zero for free atoms, flat in bonded environments."""

import pytest
import torch

from mlpot.descriptors.cutoff import baseline_coordination
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello
from mlpot.potential import Potential

from helpers import load_as_older_format

E0 = {"H": -13.6, "C": -1026.8, "O": -2037.8}


def test_saturating_transform_values_and_slope():
    c = torch.tensor([0.0, 1e-3, 1.0, 5.0, 14.0], dtype=torch.float64, requires_grad=True)
    n = baseline_coordination(c, "saturating")
    assert torch.allclose(n, 1 - torch.exp(-c.detach()), rtol=1e-12, atol=1e-16)
    (slope,) = torch.autograd.grad(n.sum(), c)
    assert torch.allclose(slope, torch.exp(-c.detach()))
    assert float(n[0]) == 0.0
    assert torch.equal(baseline_coordination(c, "linear"), c)
    with pytest.raises(ValueError, match="baseline"):
        baseline_coordination(c, "cubic")


def _bpnn(baseline: str) -> Potential:
    descriptor = SymmetryFunctions([1, 6, 8], cutoff=5.0, radial=default_radial(5.0, 4),
                                   angular=default_angular(5.0, 1, (1.0,)))
    model = BehlerParrinello(descriptor, hidden=[8], baseline=baseline)
    with torch.no_grad():
        model.coordination_energy.copy_(torch.tensor([-1.0, -4.0, -2.0]))
        for network in model.networks.values():  # switch the networks off: baseline alone
            network[-1].weight.zero_()
    return Potential(model, E0).double()


def test_saturating_baseline_adds_almost_no_force_in_a_molecule(acac_frames):
    """With the networks silent, forces are the baseline's own: large for the linear form,
    negligible for the saturating one on acac (bonded atoms have c ≫ 1)."""
    frames = acac_frames[:4]
    forces = {}
    for baseline in ("linear", "saturating"):
        potential = _bpnn(baseline)
        forces[baseline] = potential(potential.batch(frames))["forces"].abs().max()
    assert forces["linear"] > 1.0  # eV/Å
    assert forces["saturating"] < 0.05 * forces["linear"]


def test_version_1_model_files_keep_the_linear_baseline(tmp_path):
    loaded = load_as_older_format(_bpnn("linear"), tmp_path, 1, "model", "baseline")
    assert loaded.model.baseline == "linear"
