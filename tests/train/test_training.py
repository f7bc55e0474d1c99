"""A short real training run (tiny BPNN on acac): it learns, and it leaves the promised files.

Also: the saved model is the in-memory best, stored without pickle; a run killed with SIGKILL
resumes from its checkpoint and carries on where it stopped.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import mlpot
from mlpot.config import config_from_dict, load_config
from mlpot.data.records import read_frames
from mlpot.serialize import load
from mlpot.train.loss import EnergyForceLoss
from mlpot.train.metrics import predict
from mlpot.train.trainer import CHECKPOINT, Trainer
from helpers import acac_head, TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids contention on a busy 2-core machine
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def small_train(acac_dir, tmp_path_factory):
    """The first 40 frames of the acac training file (reading all 500 takes a while)."""
    path = tmp_path_factory.mktemp("data") / "train_40.xyz"
    acac_head(acac_dir / "train_300K.xyz", path, 40)
    return path


def _config(train_file, out, **training):
    return {"data": {"train": str(train_file), "valid_fraction": 0.25, "max_train": 24},
            "model": dict(TINY_MODEL),
            # plateau: a schedule that does not depend on wall-clock time, so an interrupted
            # run can be compared row by row with an uninterrupted one
            "training": {"max_epochs": 6, "max_minutes": None, "batch_size": 8,
                         "ema_decay": 0.5, "lr_schedule": "plateau", **training},
            "seed": 3, "out": str(out)}


def _log_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _valid_loss(potential, frames, config):
    """Loss of ``potential`` on ``frames`` in one batch, as the trainer defines it."""
    dtype = getattr(torch, config.training.dtype)
    potential = potential.to(dtype).eval()
    batch = potential.batch(frames, dtype=dtype)
    out = potential(batch, forces=True, create_graph=False)
    t = config.training
    loss, _ = EnergyForceLoss(t.sigma_energy, t.sigma_force, t.sigma_stress)(out, batch)
    return float(loss.detach())


@pytest.fixture(scope="module")
def short_run(acac_dir, small_train, tmp_path_factory):
    from mlpot.train.run import run_training

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "out"
    test_file = tmp_path_factory.mktemp("data") / "test_small.xyz"
    acac_head(acac_dir / "test_MD_300K.xyz", test_file, 6)
    raw = _config(small_train, out)
    raw["data"]["test"] = [str(test_file)]
    config = config_from_dict(raw)
    summary = run_training(config, progress=False)
    return config, summary, out


def test_short_training_lowers_validation_loss(short_run):
    from mlpot.train.run import build_potential, fit_statistics, load_data
    from mlpot.data.dataset import elements_of, reference_energies

    config, summary, out = short_run
    # the initial model, rebuilt as run_training builds it (same seed, same statistics)
    torch.manual_seed(config.seed)
    data = load_data(config)
    valid = data["valid"]
    assert len(valid) == 10 and len(data["train"]) == 24
    elements = elements_of(data["train"] + valid)
    e0, _ = reference_energies(data["train"], elements, data["isolated"])
    initial = build_potential(config, elements, e0)
    fit_statistics(initial, data["train"])
    initial_loss = _valid_loss(initial, valid, config)

    rows = _log_rows(out / "log.csv")
    best_logged = min(float(r["valid_loss"]) for r in rows)
    best_saved = _valid_loss(load(out / "model"), valid, config)
    # the saved model is the best epoch, and its loss is what the log says
    assert best_saved == pytest.approx(best_logged, rel=1e-4)
    assert summary["best_valid_loss"] == pytest.approx(best_logged, rel=1e-6)
    assert best_saved < 0.8 * initial_loss


def test_run_outputs(short_run):
    config, summary, out = short_run
    for name in ("model/config.json", "model/model.safetensors", "model/metadata.json",
                 "log.csv", "metrics.json", "parity.png", "learning_curve.png", "run.json",
                 CHECKPOINT):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    for png in ("parity.png", "learning_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = _log_rows(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6] and summary["epochs"] == 6
    assert {"train_loss", "valid_loss", "valid_energy_rmse", "valid_force_rmse", "lr",
            "minutes"} <= set(rows[0])

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by"] == "max_epochs" and metrics["epochs"] == 6
    assert set(metrics["metrics"]) == {"valid", "test_small"}
    assert metrics["metrics"]["test_small"]["n_structures"] == 6
    assert metrics["metrics"]["valid"]["n_structures"] == 10

    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3
    assert run["config"] == config.model_dump()
    assert run["config"]["model"]["hidden"] == [8]
    assert {"python", "torch", "ase", "numpy", "vesin", "mlpot"} <= set(run["versions"])
    assert run["versions"]["torch"] == torch.__version__
    # a commit of this repository, HEAD or (if someone committed meanwhile) an ancestor
    commit = run["git_commit"].removesuffix("+dirty")
    assert len(commit) == 40
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"],
                              cwd=ROOT, capture_output=True)
    assert ancestor.returncode == 0
    assert run["n_train"] == 24 and run["n_valid"] == 10


def test_saved_model_is_safetensors_and_json_only(short_run):
    _, _, out = short_run
    model_dir = out / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "metadata.json",
                                                           "model.safetensors"]
    for name in ("config.json", "metadata.json"):
        json.loads((model_dir / name).read_text())
    potential = mlpot.load(model_dir)
    tensors = load_file(str(model_dir / "model.safetensors"))
    state = potential.state_dict()
    assert set(tensors) == set(state)
    for name, value in tensors.items():
        assert torch.equal(state[name], value)
    # no pickle anywhere in the model folder: safetensors starts with a little-endian
    # header length, a pickle with b"\x80"
    assert not (model_dir / "model.safetensors").read_bytes().startswith(b"\x80")


def test_checkpoint_loads_weights_only(short_run):
    _, _, out = short_run
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 6
    assert {"model", "optimizer", "scheduler", "generator", "ema"} <= set(state)
    assert len(json.loads(state["history"])) == 6


def test_saved_model_predicts_like_in_memory_best(acac_frames, acac_dir, small_train,
                                                  tmp_path):
    """One epoch: the only epoch is the best, so the saved model is the in-memory one.
    Training mixes frames with and without forces (energy-only frames of the H-transfer path)."""
    from mlpot.train.run import build_potential, fit_statistics
    from mlpot.data.dataset import reference_energies

    config = config_from_dict(_config(small_train, tmp_path, max_epochs=1))
    no_forces = read_frames(acac_dir / "test_H_transfer.xyz")
    train = acac_frames[:12] + no_forces[:4]
    valid = acac_frames[100:104] + no_forces[10:12]
    e0, _ = reference_energies(acac_frames[:50], [1, 6, 8])
    torch.manual_seed(0)
    potential = build_potential(config, [1, 6, 8], e0)
    fit_statistics(potential, train)
    potential = potential.float()
    initial = {k: v.clone() for k, v in potential.state_dict().items()}
    trainer = Trainer(potential, train, valid, config.training, tmp_path, seed=0)
    summary = trainer.run()
    assert summary["epochs"] == 1
    loaded = mlpot.load(tmp_path / "model")
    frames = acac_frames[200:203] + no_forces[:2]
    ours = predict(trainer.evaluated, frames)
    theirs = predict(loaded, frames)
    for a, b in zip(ours["energy"] + ours["forces"], theirs["energy"] + theirs["forces"]):
        np.testing.assert_array_equal(a, b)
    row = _log_rows(tmp_path / "log.csv")[0]
    assert row["valid_force_rmse"] != ""  # the acac validation frames have forces
    # the saved weights are the trained ones, not the initial ones
    saved = loaded.state_dict()
    assert any(not torch.equal(saved[k], initial[k].to(saved[k].dtype)) for k in initial)


def test_kill_and_resume(short_run, small_train, tmp_path):
    """Same data, model and training settings as ``short_run``, which is therefore the
    uninterrupted run to compare with; only the stopping rules differ."""
    out = tmp_path / "run"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(small_train, out, max_epochs=100000,
                                                  max_minutes=5)))
    assert load_config(config_path).training.max_minutes == 5
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.err", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "mlpot", "train", str(config_path)],
                                   stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env=env)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "first.err").read_text()
                if (out / CHECKPOINT).exists() and (out / "log.csv").exists() \
                        and len(_log_rows(out / "log.csv")) >= 2:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("training made no checkpoint in time")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    before = _log_rows(out / "log.csv")
    checkpoint_epoch = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
    assert checkpoint_epoch >= 1 and len(before) in (checkpoint_epoch, checkpoint_epoch + 1)
    assert not (out / "metrics.json").exists()  # it did not finish

    k = checkpoint_epoch + 2
    result = subprocess.run([sys.executable, "-m", "mlpot", "train", str(config_path),
                             "--resume", "--max-epochs", str(k)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "model saved" in result.stdout
    after = _log_rows(out / "log.csv")
    assert [int(r["epoch"]) for r in after] == list(range(1, k + 1))
    # rows up to the checkpoint are kept as they were; the clock carries on
    assert after[:checkpoint_epoch] == before[:checkpoint_epoch]
    minutes = [float(r["minutes"]) for r in after]
    assert minutes == sorted(minutes)
    # an epoch logged before the kill but not checkpointed is redone identically
    for old, new in zip(before[checkpoint_epoch:], after[checkpoint_epoch:]):
        assert {**old, "minutes": None} == {**new, "minutes": None}
    # and the resumed run is the run that was never killed
    uninterrupted = _log_rows(short_run[2] / "log.csv")
    if k > len(uninterrupted):  # killed late: train an uninterrupted run that long
        from mlpot.train.run import run_training

        run_training(load_config(config_path, {"training.max_epochs": k,
                                               "out": str(tmp_path / "uninterrupted")}),
                     progress=False)
        uninterrupted = _log_rows(tmp_path / "uninterrupted" / "log.csv")
    assert [{**r, "minutes": None} for r in after] == \
        [{**r, "minutes": None} for r in uninterrupted[:k]]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["resumed"] is True and summary["epochs"] == k
    assert summary["stopped_by"] == "max_epochs"
    assert torch.load(out / CHECKPOINT, weights_only=True)["epoch"] == k
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(small_train, tmp_path):
    from mlpot.errors import ConfigError
    from mlpot.train.run import run_training

    config = config_from_dict(_config(small_train, tmp_path / "run", device="cuda"))
    with pytest.raises(ConfigError, match="training.device is 'cuda'"):
        run_training(config, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (device runs)")
@pytest.mark.parametrize("kind", ["bpnn", "equivariant"])
def test_gpu_training_matches_cpu(small_train, tmp_path, kind):
    """Two epochs in float64 on the GPU give the CPU run's losses (same seed, same order)."""
    from mlpot.train.run import run_training

    model = dict(TINY_MODEL) if kind == "bpnn" else {"kind": kind, "size": "small",
                                                     "cutoff": 4.0}
    logs = {}
    for device in ("cpu", "cuda"):
        raw = _config(small_train, tmp_path / device, device=device, max_epochs=2,
                      dtype="float64")
        raw["model"] = model
        run_training(config_from_dict(raw), progress=False)
        rows = list(csv.DictReader(open(tmp_path / device / "log.csv")))
        logs[device] = [float(r["valid_loss"]) for r in rows]
    np.testing.assert_allclose(logs["cuda"], logs["cpu"], rtol=1e-6)
