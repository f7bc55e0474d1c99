"""Message-passing models (SchNet, PaiNN, equivariant) beyond the shared physics suite: registration,
save/load, the training run and the command line.

The invariants (forces, symmetries, locality and receptive field, isolated atoms, smoothness)
are checked for them with every other model in ``tests/physics/test_invariants.py``; PaiNN's
vector features in ``test_painn.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import mlpot
from mlpot import keys
from mlpot.config import config_from_dict
from mlpot.models import MODEL_KINDS, Equivariant, PaiNN, SchNet
from mlpot.potential import Potential
from mlpot.serialize import load, save
from mlpot.train.trainer import Trainer
from helpers import acac_head

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
TINY = {"cutoff": 4.0, "n_features": 16, "n_interactions": 2, "n_rbf": 8}
KINDS = pytest.mark.parametrize("kind", ["schnet", "painn", "equivariant"])
CLASSES = {"schnet": SchNet, "painn": PaiNN, "equivariant": Equivariant}


@pytest.fixture(scope="module")
def small_train(acac_dir, tmp_path_factory):
    """The first 30 frames of the acac training file."""
    path = tmp_path_factory.mktemp("data") / "train_30.xyz"
    acac_head(acac_dir / "train_300K.xyz", path, 30)
    return path


def _random_model(kind: str, dtype=torch.float64) -> Potential:
    torch.manual_seed(4)
    model = CLASSES[kind]([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=2, n_rbf=6,
                          cutoff_function="polynomial")
    model.set_statistics(0.5, torch.tensor([-0.4, -1.2, -0.9]))
    return Potential(model, E0).to(dtype)


@KINDS
def test_registered_and_needs_no_triplets(acac_frames, kind):
    assert MODEL_KINDS[kind] is CLASSES[kind]
    potential = _random_model(kind)
    assert potential.model.angular_cutoff is None
    assert potential.model.receptive_field == pytest.approx(8.0)
    graph = potential.graph(acac_frames[0])
    assert keys.TRIPLETS not in graph and graph[keys.EDGE_INDEX].shape[1] > 0
    assert keys.TRIPLETS not in potential.batch(acac_frames[:2])
    with pytest.raises(ValueError, match="cutoff_function"):
        CLASSES[kind]([1], cutoff=4.0, cutoff_function="step")


@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_save_load_round_trip(acac_frames, tmp_path, dtype, kind):
    potential = _random_model(kind, dtype).eval()
    save(potential, tmp_path / "model", {"note": "test"})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_kind"] == kind
    shared = {"elements": [1, 6, 8], "cutoff": 4.0, "n_features": 8, "n_interactions": 2,
              "n_rbf": 6, "cutoff_function": "polynomial", "baseline": "linear"}
    own = {"equivariant": {"l_max": 3, "hidden_l": 1, "correlation": 3, "radial_hidden": 64}}
    assert config["model"] == {**shared, **own.get(kind, {})}
    loaded = load(tmp_path / "model")
    assert isinstance(loaded.model, CLASSES[kind]) and loaded.dtype == dtype
    state, original = loaded.state_dict(), potential.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in state)
    frames = acac_frames[:3]
    ours = potential(potential.batch(frames), stress=False)
    theirs = loaded(loaded.batch(frames), stress=False)
    for key in (keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGY):
        assert torch.equal(ours[key], theirs[key]), key


@KINDS
def test_trainer_uses_plain_autograd(acac_frames, tmp_path, kind):
    """The descriptor cache is for descriptor models only; these train through Potential."""
    config = config_from_dict({"data": {"train": "unused"}, "model": {"kind": kind, **TINY}})
    trainer = Trainer(_random_model(kind, torch.float32), acac_frames[:4], acac_frames[4:6],
                      config.training, tmp_path, progress=False)
    assert trainer.feature_cache is None


def _loss(potential, frames, config) -> float:
    from mlpot.train.loss import EnergyForceLoss

    t = config.training
    potential = potential.to(getattr(torch, t.dtype)).eval()
    batch = potential.batch(frames)
    out = potential(batch, forces=True, create_graph=False)
    loss, _ = EnergyForceLoss(t.sigma_energy, t.sigma_force, t.sigma_stress)(out, batch)
    return float(loss.detach())


@KINDS
def test_short_training_lowers_validation_loss(small_train, tmp_path, kind):
    from mlpot.data.dataset import elements_of, force_rms, reference_energies
    from mlpot.train.run import build_potential, fit_statistics, load_data, run_training

    config = config_from_dict({
        "data": {"train": str(small_train), "valid_fraction": 0.2, "max_train": 16},
        "model": {"kind": kind, **TINY},
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
    assert isinstance(initial.model, CLASSES[kind]) and initial.model.n_features == 16
    fit_statistics(initial, data["train"])
    # statistics: the RMS force component as output scale, coordination energies fitted
    assert float(initial.model.energy_scale) == pytest.approx(force_rms(data["train"]))
    assert bool(torch.all(initial.model.coordination_energy != 0))

    trained = load(tmp_path / "run" / "model")
    assert isinstance(trained.model, CLASSES[kind])
    initial_loss = _loss(initial, data["valid"], config)
    trained_loss = _loss(trained, data["valid"], config)
    assert trained_loss == pytest.approx(summary["best_valid_loss"], rel=1e-4)
    assert trained_loss < 0.9 * initial_loss  # 0.84 when written (force RMSE ~1 eV/Å at first)


@KINDS
def test_cli_trains(small_train, tmp_path, kind):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"max_train": 8, "valid_fraction": 0.1},
        "model": TINY,
        "training": {"batch_size": 4}}))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mlpot", "train", str(config), "--train", str(small_train),
         "--model", kind, "--cutoff", "3.5", "--max-epochs", "1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"model saved: {out / 'model'}" in result.stdout
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_kind"] == kind
    assert saved["model"]["cutoff"] == 3.5 and saved["model"]["n_features"] == 16
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    potential = mlpot.load(out / "model")
    assert isinstance(potential.model, CLASSES[kind])
