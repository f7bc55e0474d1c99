"""Message-passing ensembles evaluated together with torch.func.vmap (one forward pass over
the members' stacked weights, one backward pass) give the numbers of evaluating each member
in turn, and Ensemble picks that path where it should."""

import numpy as np
import pytest
import torch

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.models import Equivariant, PaiNN, SchNet
from mlpot.models.variance import VarianceHead
from mlpot.physics.dispersion import Dispersion
from mlpot.potential import Potential
from mlpot.uncertainty import vmapped
from mlpot.uncertainty.ensemble import Ensemble
from mlpot.uncertainty.vmapped import can_vmap, vmap_pays, vmapped_forward
from helpers import E0, random_bpnn

CELL = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])
TINY = dict(cutoff=4.0, n_features=6, n_interactions=2, n_rbf=4)
KINDS = {"schnet": (SchNet, {}), "painn": (PaiNN, {}),
         "equivariant": (Equivariant, dict(l_max=2, hidden_l=1, correlation=2,
                                           radial_hidden=8))}
KIND = pytest.mark.parametrize("kind", sorted(KINDS))


def _member(kind: str, seed: int, head: bool = False, dtype=torch.float64, **changes):
    """A tiny random potential of ``kind`` (H, C, O) whose weights and statistics differ per
    seed; optionally with a variance head."""
    cls, own = KINDS[kind]
    torch.manual_seed(seed)
    model = cls([1, 6, 8], **{**TINY, **own, **changes})
    statistics = dict(mean_neighbours=3.0 + seed) if kind == "equivariant" else {}
    model.set_statistics(0.2 + 0.1 * seed, 0.3 * torch.randn(3, dtype=torch.float64),
                         **statistics)
    variance_head = VarianceHead([1, 6, 8], 4.0, 0.001, 0.03) if head else None
    return Potential(model, E0, variance_head).to(dtype).eval()


def _in_turn(members, batch, forces=True, stress=False):
    outs = [m(batch, forces=forces, stress=stress) for m in members]
    return {key: torch.stack([o[key] for o in outs]).detach()
            for key in outs[0] if key in (keys.ENERGY, keys.FORCES, keys.STRESS,
                                          keys.ATOMIC_ENERGY, keys.ENERGY_VAR_ALEATORIC,
                                          keys.FORCES_VAR_ALEATORIC)}


def _assert_same(ours, reference, tolerance=1e-10):
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype, key
        assert not ours[key].requires_grad, key
        torch.testing.assert_close(ours[key], value, rtol=tolerance, atol=tolerance, msg=key)


@KIND
@pytest.mark.parametrize("head", [False, True])
def test_vmapped_equals_members_in_turn_molecules(acac_frames, kind, head):
    members = [_member(kind, seed, head) for seed in (1, 2, 3)]
    assert can_vmap(members)
    batch = members[0].batch(acac_frames[:3])
    reference = _in_turn(members, batch)
    _assert_same(vmapped_forward(members, batch), reference)
    # the members really differ, so a mixed-up member axis would show
    assert float(reference[keys.FORCES].std(0).mean()) > 1e-3
    energy_only = vmapped_forward(members, batch, forces=False)
    _assert_same(energy_only, _in_turn(members, batch, forces=False))


@KIND
def test_vmapped_equals_members_in_turn_periodic_with_stress(acac_frames, kind):
    frames = [Frame(numbers=f.numbers, positions=f.positions, cell=CELL,
                    pbc=np.array([True] * 3)) for f in acac_frames[:2]]
    members = [_member(kind, seed) for seed in (4, 5)]
    batch = members[0].batch(frames)
    assert bool((batch[keys.EDGE_SHIFT] != 0).any())  # images across the cell take part
    reference = _in_turn(members, batch, stress=True)
    _assert_same(vmapped_forward(members, batch, stress=True), reference)
    assert float(reference[keys.STRESS].std(0).abs().max()) > 1e-5


@KIND
def test_float32_ensemble_uses_the_vmapped_path(acac_frames, kind, monkeypatch):
    members = [_member(kind, seed, dtype=torch.float32) for seed in (6, 7)]
    ensemble = Ensemble(members).eval()
    batch = ensemble.batch(acac_frames[:1])
    assert batch[keys.POSITIONS].dtype == torch.float32 and vmap_pays(batch)
    calls = []
    monkeypatch.setattr("mlpot.uncertainty.ensemble.vmapped_forward",
                        lambda *args, **kwargs: calls.append(1) or vmapped_forward(
                            *args, **kwargs))
    out = ensemble(batch)
    assert calls
    in_turn = ensemble._members_in_turn(batch, True, False, False)
    assert out[keys.FORCES_MEMBERS].dtype == torch.float32
    torch.testing.assert_close(out[keys.ENERGY_MEMBERS], in_turn[keys.ENERGY].detach(),
                               rtol=0, atol=1e-3)  # eV on ~ -9e3 eV totals
    torch.testing.assert_close(out[keys.FORCES_MEMBERS], in_turn[keys.FORCES].detach(),
                               rtol=1e-4, atol=1e-4)


def test_stacked_weights_are_reused_until_a_weight_changes(acac_frames, monkeypatch):
    """The ensemble stacks its members' weights once; an in-place change of one member's
    parameter (an optimiser step, load_state_dict) or a dtype change restacks them."""
    ensemble = Ensemble([_member("schnet", seed) for seed in (1, 2)]).eval()
    batch = ensemble.batch(acac_frames[:1])
    stackings = []
    monkeypatch.setattr("mlpot.uncertainty.ensemble.stacked_state",
                        lambda models: stackings.append(1) or vmapped.stacked_state(models))
    first = ensemble(batch)[keys.FORCES_MEMBERS]
    torch.testing.assert_close(ensemble(batch)[keys.FORCES_MEMBERS], first, rtol=0, atol=0)
    assert len(stackings) == 1
    with torch.no_grad():
        next(ensemble.members[1].model.parameters()).mul_(1.5)
    changed = ensemble(batch)[keys.FORCES_MEMBERS]
    assert len(stackings) == 2
    _assert_same({"forces": changed}, {"forces": _in_turn(ensemble.members, batch)[keys.FORCES]})
    assert float((changed[1] - first[1]).abs().max()) > 1e-6
    torch.testing.assert_close(changed[0], first[0], rtol=0, atol=0)
    ensemble.float()
    out = ensemble(ensemble.batch(acac_frames[:1], dtype=torch.float32))
    assert len(stackings) == 3 and out[keys.FORCES_MEMBERS].dtype == torch.float32


def test_ensemble_runs_members_in_turn_for_large_cpu_graphs_and_training(acac_frames,
                                                                         monkeypatch):
    ensemble = Ensemble([_member("schnet", seed) for seed in (1, 2)]).eval()
    small, large = ensemble.batch(acac_frames[:1]), ensemble.batch(acac_frames[:8])
    assert vmap_pays(small) and not vmap_pays(large)
    calls = []
    monkeypatch.setattr("mlpot.uncertainty.ensemble.vmapped_forward",
                        lambda *args, **kwargs: calls.append(1) or vmapped_forward(
                            *args, **kwargs))
    ensemble(large)
    ensemble(small, create_graph=True)
    assert not calls
    ensemble(small)
    assert len(calls) == 1
    monkeypatch.setattr(vmapped, "MAX_EDGES_CPU", 10**9)
    assert vmap_pays(large)


def test_what_cannot_be_vmapped():
    schnet = [_member("schnet", 1), _member("schnet", 2)]
    assert can_vmap(schnet)
    wider = _member("schnet", 3, n_features=8)
    other_cutoff_function = _member("schnet", 3, cutoff_function="polynomial")
    painn = _member("painn", 3)
    single = _member("schnet", 2, dtype=torch.float32)
    dispersion = Potential(_member("schnet", 2).model, E0,
                           dispersion=Dispersion([1, 6, 8], 4.0)).double()
    for odd in (wider, other_cutoff_function, painn, single, dispersion):
        assert not can_vmap([schnet[0], odd])
    assert not can_vmap([random_bpnn(1), random_bpnn(2)])  # stacked instead
