"""PaiNN beyond the shared physics suite: equivariant vector features, the safe norm under force
training, save/load, the training run and the command line.

The invariants of the energy (forces, symmetries, locality and receptive field, isolated atoms,
smoothness) are checked for PaiNN with every other model in ``tests/physics/test_invariants.py``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import mlpot
from mlpot import keys
from mlpot.config import config_from_dict
from mlpot.data.records import Frame
from mlpot.models import MODEL_KINDS, PaiNN
from mlpot.potential import Potential
from mlpot.serialize import load, save

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
TINY = {"kind": "painn", "cutoff": 4.0, "n_features": 16, "n_interactions": 2, "n_rbf": 8}
LINES = 17  # lines per acac frame


@pytest.fixture(scope="module")
def small_train(acac_dir, tmp_path_factory):
    """The first 30 frames of the acac training file."""
    path = tmp_path_factory.mktemp("data") / "train_30.xyz"
    with open(acac_dir / "train_300K.xyz") as handle:
        path.write_text("".join(next(handle) for _ in range(30 * LINES)))
    return path


def _random_painn(dtype=torch.float64) -> Potential:
    """Seeded default initialisation, polynomial cutoff, nonzero coordination energies."""
    torch.manual_seed(4)
    model = PaiNN([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=2, n_rbf=6,
                  cutoff_function="polynomial")
    model.set_statistics(0.5, torch.tensor([-0.4, -1.2, -0.9]))
    return Potential(model, E0).to(dtype)


def _frame(numbers, positions, cell=None) -> Frame:
    periodic = cell is not None
    return Frame(numbers=np.asarray(numbers, dtype=np.int64),
                 positions=np.asarray(positions, dtype=np.float64),
                 cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64),
                 pbc=np.array([periodic] * 3))


def _orthogonal(rng, proper: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def test_registered_and_needs_no_triplets(acac_frames):
    assert MODEL_KINDS["painn"] is PaiNN
    potential = _random_painn()
    assert potential.model.angular_cutoff is None
    assert potential.model.receptive_field == pytest.approx(8.0)
    graph = potential.graph(acac_frames[0])
    assert keys.TRIPLETS not in graph and graph[keys.EDGE_INDEX].shape[1] > 0
    with pytest.raises(ValueError, match="cutoff_function"):
        PaiNN([1], cutoff=4.0, cutoff_function="step")


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_vector_features_are_equivariant(acac_frames, proper):
    """v_i(Q r) = Q v_i(r) and s_i(Q r) = s_i(r) for an orthogonal Q (det ±1), in a molecule
    and a periodic cell (cell rotated too); forces rotate with Q, energies do not change."""
    rng = np.random.default_rng(21 + proper)
    q = _orthogonal(rng, proper)
    potential = _random_painn().eval()
    model = potential.model
    cell = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])
    frames = [acac_frames[0], _frame(acac_frames[1].numbers, acac_frames[1].positions, cell)]
    shift = rng.normal(size=3)
    moved = [_frame(f.numbers, f.positions @ q.T + shift, f.cell @ q.T if f.pbc.all() else None)
             for f in frames]
    n = sum(len(f) for f in frames)
    batch, batch_moved = potential.batch(frames), potential.batch(moved)
    s, v = (x.detach()[:n] for x in model.features(batch))
    s_q, v_q = (x.detach()[:n] for x in model.features(batch_moved))
    q_t = torch.as_tensor(q)
    assert float(v.norm(dim=1).min()) > 1e-3  # every atom has non-trivial vector features
    torch.testing.assert_close(s_q, s, rtol=0, atol=1e-10 * float(s.abs().max()))
    rotated = torch.einsum("ab,nbf->naf", q_t, v)
    torch.testing.assert_close(v_q, rotated, rtol=0, atol=1e-10 * float(v.abs().max()))

    out, out_q = potential(batch), potential(batch_moved)
    forces = out[keys.FORCES].detach()
    assert float(forces.abs().max()) > 1e-2
    torch.testing.assert_close(out_q[keys.FORCES].detach(), forces @ q_t.T, rtol=0,
                               atol=1e-10 * float(forces.abs().max()))
    torch.testing.assert_close(out_q[keys.ENERGY], out[keys.ENERGY], rtol=0, atol=1e-9)


def test_force_training_is_finite_where_vectors_vanish():
    """At the centre of a symmetric linear O=C=O the vector features cancel exactly (V v = 0),
    as they do for an isolated atom and the ghosts: the safe norm keeps the parameter gradient
    of a force loss (a second derivative) finite there."""
    potential = _random_painn().train()
    co2 = _frame([8, 6, 8], [[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]])
    lone = _frame([1], [[0.0, 0.0, 0.0]])
    batch = potential.batch([co2, lone])
    _, v = potential.model.features(batch)
    assert torch.all(v[1] == 0) and torch.all(v[3] == 0)  # the carbon, the lone H
    assert float(v[0].detach().abs().max()) > 1e-3  # the oxygens' vectors do not vanish
    out = potential(batch, forces=True, create_graph=True)
    loss = (out[keys.FORCES] ** 2).sum() + out[keys.ENERGY].sum() * 1e-3
    grads = torch.autograd.grad(loss, [p for p in potential.parameters() if p.requires_grad])
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_save_load_round_trip(acac_frames, tmp_path, dtype):
    potential = _random_painn(dtype).eval()
    save(potential, tmp_path / "model", {"note": "test"})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_kind"] == "painn"
    assert config["model"] == {"elements": [1, 6, 8], "cutoff": 4.0, "n_features": 8,
                               "n_interactions": 2, "n_rbf": 6,
                               "cutoff_function": "polynomial"}
    loaded = load(tmp_path / "model")
    assert isinstance(loaded.model, PaiNN) and loaded.dtype == dtype
    state, original = loaded.state_dict(), potential.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in state)
    frames = acac_frames[:3]
    ours = potential(potential.batch(frames), stress=False)
    theirs = loaded(loaded.batch(frames), stress=False)
    for key in (keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGY):
        assert torch.equal(ours[key], theirs[key]), key


def _loss(potential, frames, config) -> float:
    from mlpot.train.loss import EnergyForceLoss

    t = config.training
    potential = potential.to(getattr(torch, t.dtype)).eval()
    batch = potential.batch(frames)
    out = potential(batch, forces=True, create_graph=False)
    loss, _ = EnergyForceLoss(t.sigma_energy, t.sigma_force, t.sigma_stress)(out, batch)
    return float(loss.detach())


def test_short_training_lowers_validation_loss(small_train, tmp_path):
    from mlpot.data.dataset import elements_of, force_rms, reference_energies
    from mlpot.train.run import build_potential, fit_statistics, load_data, run_training

    config = config_from_dict({
        "data": {"train": str(small_train), "valid_fraction": 0.2, "max_train": 16},
        "model": TINY,
        "training": {"max_epochs": 2, "max_minutes": None, "batch_size": 2,
                     "learning_rate": 1e-2, "ema_decay": 0.5},
        "seed": 5, "out": str(tmp_path / "run")})
    summary = run_training(config, progress=False)
    assert summary["epochs"] == 2 and summary["stopped_by"] == "max_epochs"

    # the initial model, rebuilt as run_training builds it (same seed, same statistics)
    torch.manual_seed(config.seed)
    data = load_data(config)
    elements = elements_of(data["train"] + data["valid"])
    e0, _ = reference_energies(data["train"], elements, data["isolated"])
    initial = build_potential(config, elements, e0)
    assert isinstance(initial.model, PaiNN) and initial.model.n_features == 16
    fit_statistics(initial, data["train"])
    assert float(initial.model.energy_scale) == pytest.approx(force_rms(data["train"]))
    assert bool(torch.all(initial.model.coordination_energy != 0))

    trained = load(tmp_path / "run" / "model")
    assert isinstance(trained.model, PaiNN)
    initial_loss = _loss(initial, data["valid"], config)
    trained_loss = _loss(trained, data["valid"], config)
    assert trained_loss == pytest.approx(summary["best_valid_loss"], rel=1e-4)
    assert trained_loss < 0.9 * initial_loss


def test_cli_trains_painn(small_train, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"max_train": 8, "valid_fraction": 0.1},
        "model": {k: v for k, v in TINY.items() if k != "kind"},
        "training": {"batch_size": 4}}))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mlpot", "train", str(config), "--train", str(small_train),
         "--model", "painn", "--cutoff", "3.5", "--max-epochs", "1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"model saved: {out / 'model'}" in result.stdout
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_kind"] == "painn"
    assert saved["model"]["cutoff"] == 3.5 and saved["model"]["n_features"] == 16
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    potential = mlpot.load(out / "model")
    assert isinstance(potential.model, PaiNN)
