"""Behler–Parrinello ensembles evaluated together (one descriptor pass, stacked networks,
one batched backward) give the numbers of evaluating each member in turn."""

import numpy as np
import pytest
import torch

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello, SchNet
from mlpot.models.variance import VarianceHead
from mlpot.potential import Potential
from mlpot.uncertainty.ensemble import Ensemble
from mlpot.uncertainty.stacked import can_stack, stacked_forward

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
CELL = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])


def _descriptor() -> SymmetryFunctions:
    return SymmetryFunctions([1, 6, 8], cutoff=4.0, angular_cutoff=3.5,
                             radial=default_radial(4.0, 4),
                             angular=default_angular(3.5, 2, (1.0, 4.0)))


def _member(seed: int, head: bool = False) -> Potential:
    """Random weights, statistics and baseline terms that differ per member."""
    generator = torch.Generator().manual_seed(seed)
    model = BehlerParrinello(_descriptor(), hidden=(8, 8)).double()
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


def _in_turn(members, batch, stress=False):
    outs = [m(batch, stress=stress) for m in members]
    return {key: torch.stack([o[key] for o in outs]).detach()
            for key in outs[0] if key in (keys.ENERGY, keys.FORCES, keys.STRESS,
                                          keys.ATOMIC_ENERGY, keys.ENERGY_VAR_ALEATORIC,
                                          keys.FORCES_VAR_ALEATORIC)}


@pytest.mark.parametrize("head", [False, True])
def test_stacked_equals_members_in_turn_molecules(acac_frames, head):
    members = [_member(seed, head) for seed in (1, 2, 3)]
    assert can_stack(members)
    batch = members[0].batch(acac_frames[:4])
    stacked = stacked_forward(members, batch)
    reference = _in_turn(members, batch)
    assert set(reference) <= set(stacked)
    for key, value in reference.items():
        torch.testing.assert_close(stacked[key], value, rtol=1e-12, atol=1e-12, msg=key)
    # the members really differ, so a mixed-up member axis would show
    assert float(reference[keys.FORCES].std(0).mean()) > 1e-2


def test_stacked_equals_members_in_turn_periodic_with_stress(acac_frames):
    frames = [Frame(numbers=f.numbers, positions=f.positions, cell=CELL,
                    pbc=np.array([True] * 3)) for f in acac_frames[:2]]
    members = [_member(seed) for seed in (4, 5)]
    batch = members[0].batch(frames)
    stacked = stacked_forward(members, batch, stress=True)
    reference = _in_turn(members, batch, stress=True)
    for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
        torch.testing.assert_close(stacked[key], reference[key], rtol=1e-12, atol=1e-12)


def test_ensemble_uses_the_stacked_path_in_float32_too(acac_frames):
    members = [_member(seed).float() for seed in (6, 7)]
    ensemble = Ensemble(members).eval()
    batch = ensemble.batch(acac_frames[:3])
    out = ensemble(batch)
    in_turn = ensemble._members_in_turn(batch, True, False, False)
    torch.testing.assert_close(out[keys.ENERGY_MEMBERS], in_turn[keys.ENERGY], rtol=0,
                               atol=1e-3)  # eV on ~ -1e4 eV totals; float32 networks
    torch.testing.assert_close(out[keys.FORCES_MEMBERS], in_turn[keys.FORCES].detach(),
                               rtol=1e-4, atol=1e-4)


def test_what_cannot_be_stacked():
    bpnn = [_member(1), _member(2)]
    wider = Potential(BehlerParrinello(_descriptor(), hidden=(8, 4)), E0).double()
    other_baseline = Potential(BehlerParrinello(_descriptor(), hidden=(8, 8),
                                                baseline="saturating"), E0).double()
    schnet = Potential(SchNet([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=1,
                              n_rbf=4), E0).double()
    assert can_stack(bpnn)
    for odd in (wider, other_baseline, schnet, bpnn[1].float()):
        assert not can_stack([bpnn[0], odd])
