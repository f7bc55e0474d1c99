"""Behler–Parrinello ensembles evaluated together (one descriptor pass, stacked networks,
one batched backward) give the numbers of evaluating each member in turn."""

import numpy as np
import pytest
import torch

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.models import BehlerParrinello, SchNet
from mlpot.potential import Potential
from mlpot.uncertainty.ensemble import Ensemble
from mlpot.uncertainty.stacked import can_stack, stacked_forward
from helpers import E0, random_bpnn, small_descriptor

CELL = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])


def _in_turn(members, batch, stress=False):
    outs = [m(batch, stress=stress) for m in members]
    return {key: torch.stack([o[key] for o in outs]).detach()
            for key in outs[0] if key in (keys.ENERGY, keys.FORCES, keys.STRESS,
                                          keys.ATOMIC_ENERGY, keys.ENERGY_VAR_ALEATORIC,
                                          keys.FORCES_VAR_ALEATORIC)}


@pytest.mark.parametrize("head", [False, True])
def test_stacked_equals_members_in_turn_molecules(acac_frames, head):
    members = [random_bpnn(seed, head) for seed in (1, 2, 3)]
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
    members = [random_bpnn(seed) for seed in (4, 5)]
    batch = members[0].batch(frames)
    stacked = stacked_forward(members, batch, stress=True)
    reference = _in_turn(members, batch, stress=True)
    for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
        torch.testing.assert_close(stacked[key], reference[key], rtol=1e-12, atol=1e-12)


def test_ensemble_uses_the_stacked_path_in_float32_too(acac_frames):
    members = [random_bpnn(seed).float() for seed in (6, 7)]
    ensemble = Ensemble(members).eval()
    batch = ensemble.batch(acac_frames[:3])
    out = ensemble(batch)
    in_turn = ensemble._members_in_turn(batch, True, False, False)
    torch.testing.assert_close(out[keys.ENERGY_MEMBERS], in_turn[keys.ENERGY], rtol=0,
                               atol=1e-3)  # eV on ~ -1e4 eV totals; float32 networks
    torch.testing.assert_close(out[keys.FORCES_MEMBERS], in_turn[keys.FORCES].detach(),
                               rtol=1e-4, atol=1e-4)


def test_what_cannot_be_stacked():
    bpnn = [random_bpnn(1), random_bpnn(2)]
    wider = Potential(BehlerParrinello(small_descriptor(), hidden=(8, 4)), E0).double()
    other_baseline = Potential(BehlerParrinello(small_descriptor(), hidden=(8, 8),
                                                baseline="saturating"), E0).double()
    schnet = Potential(SchNet([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=1,
                              n_rbf=4), E0).double()
    assert can_stack(bpnn)
    for odd in (wider, other_baseline, schnet, bpnn[1].float()):
        assert not can_stack([bpnn[0], odd])
