"""Selection keeps the most uncertain snapshots and drops near-duplicates; exploration
reports the model's own epistemic force σ for every snapshot it keeps."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlpot.active.explore import explore, largest_force_sigma
from mlpot.active.select import fingerprint, select
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.uncertainty.ensemble import Ensemble
from helpers import random_bpnn


def _moved(atoms, shift, seed):
    moved = atoms.copy()
    moved.positions += np.random.default_rng(seed).normal(0, shift, moved.positions.shape)
    return moved


def test_fingerprint_is_invariant_and_separates_structures():
    water = _moved(molecule("H2O"), 0.05, 0)
    turned = water.copy()
    turned.rotate(73, "z")
    turned.translate([1.0, -2.0, 0.5])
    swapped = turned[[0, 2, 1]]
    np.testing.assert_allclose(fingerprint(swapped), fingerprint(water), atol=1e-12)
    assert np.sqrt(np.mean((fingerprint(_moved(water, 0.1, 1)) - fingerprint(water))**2)) > 0.02


def test_select_threshold_order_and_diversity():
    base = molecule("H2O")
    candidates = [_moved(base, 0.1, k) for k in range(6)]
    candidates.append(candidates[2].copy())  # an exact duplicate of candidate 2
    candidates[6].rotate(40, "x")
    sigmas = np.array([0.05, 0.3, 0.9, 0.2, 0.6, 0.01, 0.95])
    chosen = select(candidates, sigmas, [], threshold=0.1, max_new=10, min_distance=0.01)
    assert chosen == [6, 4, 1, 3]  # 2 duplicates 6 (chosen first: larger σ); 0, 5 below σ
    assert select(candidates, sigmas, [], 0.1, 2, 0.01) == [6, 4]
    known = [candidates[4].copy()]
    assert 4 not in select(candidates, sigmas, known, 0.1, 10, 0.01)


def test_exploration_records_the_ensembles_sigma():
    members = [random_bpnn(seed) for seed in (1, 2, 3)]
    with torch.no_grad():
        for member in members:
            member.model.energy_scale.fill_(0.02)  # gentle forces for a stable trajectory
    calculator = MlpotCalculator(Ensemble(members))
    start = molecule("CH3CH2OH")
    snapshots, sigmas = explore(calculator, [start], temperature=300, steps=20, dt=0.25,
                                interval=5, friction=0.02, stop_sigma=1e9, seed=0)
    assert len(snapshots) == 4 and len(sigmas) == 4
    probe = snapshots[2].copy()
    probe.calc = calculator
    probe.get_forces()
    assert largest_force_sigma(probe) == sigmas[2]
    assert not np.allclose(snapshots[0].positions, start.positions)
    stopped, _ = explore(calculator, [start], 300, 20, 0.25, 5, 0.02, stop_sigma=0.0, seed=0)
    assert len(stopped) == 1  # the first snapshot already passes σ > 0: the trajectory ends


def test_pool_sigmas_are_the_ensembles_own():
    from mlpot.active.explore import pool_sigmas

    ensemble = Ensemble([random_bpnn(seed) for seed in (4, 5)])
    pool = [_moved(molecule("CH3CH2OH"), 0.05, k) for k in range(5)]
    sigmas = pool_sigmas(ensemble, pool, batch_size=2)
    calculator = MlpotCalculator(ensemble)
    for atoms, sigma in zip(pool, sigmas):
        probe = atoms.copy()
        probe.calc = calculator
        probe.get_forces()
        assert sigma == pytest.approx(largest_force_sigma(probe), rel=1e-6)


def test_weighted_selection_follows_sigma():
    """Drawn with probability ∝ σ: over many draws a candidate's rate of being picked first
    grows with its σ; below-threshold ones are never picked."""
    base = molecule("H2O")
    candidates = [_moved(base, 0.1, k) for k in range(4)]
    sigmas = np.array([0.05, 0.2, 0.4, 0.8])
    firsts = [select(candidates, sigmas, [], 0.1, 1, 0.0, "weighted",
                     np.random.default_rng(seed))[0] for seed in range(2000)]
    counts = np.bincount(firsts, minlength=4)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / 2000, [0.2 / 1.4, 0.4 / 1.4, 0.8 / 1.4], atol=0.04)
    with pytest.raises(ValueError, match="strategy"):
        select(candidates, sigmas, [], 0.1, 1, 0.0, "greedy")


def test_diverse_selection_spreads_the_batch():
    """σ × distance: a near copy of the most uncertain structure loses to a less uncertain
    one far away (top-σ would take the copy), and a candidate next to a labelled structure
    is passed over; every pick maximises σ × (distance to the nearest known or chosen)."""
    base = molecule("H2O")
    a = _moved(base, 0.1, 0)
    a_copy = a.copy()
    bond = a.positions[1] - a.positions[0]
    a_copy.positions[1] += 0.06 * bond / np.linalg.norm(bond)  # near a, not a duplicate
    far = _moved(base, 0.3, 1)
    near_known = _moved(base, 0.1, 2)
    known_one = near_known.copy()
    known_one.positions[2] += [0.0, 0.02, 0.0]
    candidates = [a, a_copy, far, near_known]
    sigmas = np.array([1.0, 0.95, 0.5, 0.9])

    def distance(x, y):  # fingerprint RMS from scratch: sorted pair distances
        dx = np.sort(x.get_all_distances()[np.triu_indices(3, 1)])
        dy = np.sort(y.get_all_distances()[np.triu_indices(3, 1)])
        return np.sqrt(np.mean((dx - dy) ** 2))

    assert select(candidates, sigmas, [], 0.1, 2, 0.01, "top") == [0, 1]
    chosen = select(candidates, sigmas, [known_one], 0.1, 3, 0.01, "diverse")
    labelled = [known_one]
    for pick in chosen:  # brute force: the largest σ × nearest distance among the rest
        rest = [k for k in range(4) if k not in chosen[:chosen.index(pick)]]
        scores = {k: sigmas[k] * min(distance(candidates[k], x) for x in labelled) for k in rest}
        assert pick == max(scores, key=scores.get)
        labelled.append(candidates[pick])
    assert chosen[:2] == [0, 2] and 3 not in chosen[:2]
    # with nothing of its composition known, the first pick is the most uncertain
    assert select(candidates, sigmas, [], 0.1, 1, 0.01, "diverse") == [0]
    assert select(candidates, sigmas, [], 0.99, 4, 0.01, "diverse") == [0]  # threshold holds
    # a composition nothing labelled shares goes first, however small its σ (above threshold)
    ammonia = _moved(molecule("NH3"), 0.05, 3)
    mixed = select(candidates + [ammonia], np.append(sigmas, 0.2), [known_one], 0.1, 2, 0.01,
                   "diverse")
    assert mixed == [4, 0]
