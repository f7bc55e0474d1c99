"""The cached-descriptor training path gives the Potential's own energies and forces."""

import numpy as np
import pytest
import torch

from mlpot.data.records import Frame
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello
from mlpot.potential import Potential
from mlpot.train.feature_cache import FeatureCache, cache_bytes, predict_cached


def small_bpnn(elements, cutoff=4.0, angular_kind="G4") -> Potential:
    descriptor = SymmetryFunctions(elements, cutoff=cutoff, radial=default_radial(cutoff, 5),
                                   angular=default_angular(cutoff, 2, (1.0, 4.0)),
                                   angular_kind=angular_kind)
    model = BehlerParrinello(descriptor, hidden=[16])
    torch.manual_seed(0)
    n = descriptor.n_features
    model.set_statistics(torch.rand(len(elements), n), 0.5 + torch.rand(len(elements), n), 0.7,
                         torch.tensor([-0.3, -0.8, -1.1][:len(elements)]))
    e0 = {"H": -13.6, "C": -1026.8, "O": -2037.8}
    return Potential(model, e0).double()


@pytest.mark.parametrize("angular_kind", ["G4", "G5"])  # G5: from moments, no triplets
def test_cached_energies_and_forces_equal_autograd(acac_frames, angular_kind):
    potential = small_bpnn([1, 6, 8], angular_kind=angular_kind)
    assert potential.model.descriptor.needs_triplets == (angular_kind == "G4")
    frames = acac_frames[:6]
    cache = FeatureCache(potential, frames, dtype=torch.float64, chunk=4, progress=False)
    cached = predict_cached(potential.model, cache.batch([4, 0, 5]), create_graph=False)
    reference = potential(potential.batch([frames[4], frames[0], frames[5]]), forces=True)
    scale = reference["forces"].abs().max()
    assert torch.allclose(cached["energy"], reference["energy"], rtol=0, atol=1e-9)
    assert float((cached["forces"] - reference["forces"]).abs().max() / scale) < 1e-12


def test_cache_handles_periodic_cells_and_mixed_sizes():
    """Images of an atom move with it: the cache must match autograd in small cells too."""
    from ase.build import bulk

    potential = small_bpnn([1, 6], cutoff=3.5)
    rng = np.random.default_rng(3)
    frames = []
    for k, repeat in enumerate([(1, 1, 1), (2, 1, 1)]):
        atoms = bulk("C", "diamond", a=3.57).repeat(repeat)
        atoms.numbers[0] = 1
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        frames.append(Frame(numbers=atoms.numbers.astype(np.int64), positions=atoms.positions,
                            cell=atoms.cell.array, pbc=atoms.pbc, energy=0.0, index=k))
    cache = FeatureCache(potential, frames, dtype=torch.float64, progress=False)
    cached = predict_cached(potential.model, cache.batch([0, 1]), create_graph=False)
    reference = potential(potential.batch(frames), forces=True)
    assert torch.allclose(cached["energy"], reference["energy"], rtol=0, atol=1e-9)
    assert torch.allclose(cached["forces"], reference["forces"], rtol=0, atol=1e-10)


def test_training_gradients_match_autograd_path(acac_frames):
    """The loss gradient w.r.t. parameters is the same through either path."""
    potential = small_bpnn([1, 6, 8])
    frames = acac_frames[:3]
    cache = FeatureCache(potential, frames, dtype=torch.float64, progress=False)

    def gradient(prediction, energy, forces):
        loss = ((prediction["energy"] - energy) ** 2).sum() + (
            (prediction["forces"] - forces) ** 2).sum()
        return torch.autograd.grad(loss, list(potential.parameters()), allow_unused=True)

    batch = cache.batch(range(3))
    cached = gradient(predict_cached(potential.model, batch), batch["energy"], batch["forces"])
    full = potential.batch(frames)
    direct = gradient(potential(full, forces=True, create_graph=True), full["energy"],
                      full["forces"])
    for a, b in zip(cached, direct):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_cache_size_estimate_bounds_real_size(acac_frames):
    potential = small_bpnn([1, 6, 8])
    frames = acac_frames[:2]
    cache = FeatureCache(potential, frames, dtype=torch.float64, progress=False)
    used = sum(item["jac"].numel() * 8 for item in cache.items)
    assert used <= cache_bytes(frames, potential.model.descriptor.n_features, torch.float64)
    assert used > 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_trainer_uses_cache_when_asked(acac_frames, tmp_path, use_cache):
    from mlpot.config import TrainingConfig
    from mlpot.train.trainer import Trainer

    potential = small_bpnn([1, 6, 8])
    config = TrainingConfig(max_epochs=1, cache_descriptors=use_cache, dtype="float64")
    trainer = Trainer(potential, acac_frames[:4], acac_frames[4:6], config, tmp_path)
    assert (trainer.feature_cache is not None) == use_cache
    summary = trainer.run()
    assert summary["epochs"] == 1



@pytest.mark.parametrize("angular_kind", ["G4", "G5"])
def test_angular_jacobian_equals_forward_mode_over_positions(acac_frames, angular_kind):
    """The per-triplet derivatives, scattered to centre and neighbours, are the Jacobian that
    forward-mode autograd over every atom's position gives (acac and a periodic cell whose
    atoms see their own images). G5 with ζ = 16 (beyond the moments' reach) sums triplets."""
    from ase.build import bulk

    from mlpot.data.batch import structure_jacobian
    from mlpot.train.feature_cache import angular_jacobian

    cell = bulk("C", "diamond", a=3.57).repeat((2, 1, 1))
    cell.numbers[0] = 1
    periodic = Frame(numbers=cell.numbers.astype(np.int64), positions=cell.positions,
                     cell=cell.cell.array, pbc=cell.pbc, energy=0.0, index=9)
    descriptor = SymmetryFunctions([1, 6, 8], cutoff=3.5, radial=default_radial(3.5, 3),
                                   angular=default_angular(3.5, 2, (1.0, 16.0)),
                                   angular_kind=angular_kind).double()
    assert descriptor.needs_triplets
    potential = Potential(BehlerParrinello(descriptor, hidden=[4]),
                          {"H": -13.6, "C": -1026.8, "O": -2037.8}).double()
    batch = potential.batch([acac_frames[0], periodic, acac_frames[1]], dtype=torch.float64)

    def angular(positions):
        return descriptor({**batch, "positions": positions})[:, descriptor.n_radial:]

    dense = structure_jacobian(angular, batch).permute(2, 3, 0, 1)
    assert dense.abs().max() > 0
    assert torch.allclose(angular_jacobian(descriptor, batch), dense, rtol=0, atol=1e-12)
