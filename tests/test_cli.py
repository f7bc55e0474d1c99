"""The command line as a user runs it: real subprocesses of ``python -m mlpot``."""

import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import yaml

import mlpot
from helpers import acac_head

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors; the machine may be busy
LINES = 17  # lines per acac frame


def mlpot_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlpot", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def linear_run(acac_dir, tmp_path_factory):
    """`mlpot train` of a linear model with a tiny symmetry-function grid, in float64."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"max_train": 12, "valid_fraction": 0.1},
        "model": {"n_radial": 4, "n_angular_eta": 1, "zetas": [1.0], "ridge": 1e-6},
    }))
    test_file = acac_head(acac_dir / "test_MD_300K.xyz", folder / "test_small.xyz", 8)
    train_file = acac_head(acac_dir / "train_300K.xyz", folder / "train_40.xyz", 40)
    out = folder / "run"
    result = mlpot_cli("train", config, "--train", train_file,
                       "--test", test_file, "--model", "linear", "--cutoff", "4.0",
                       "--dtype", "float64", "--out", out, cwd=folder)
    return result, out, test_file


def test_train_prints_model_path(linear_run):
    result, out, _ = linear_run
    assert result.returncode == 0, result.stderr
    assert f"model saved: {out / 'model'}" in result.stdout
    assert (out / "model" / "config.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_kind"] == "linear" and config["dtype"] == "float64"
    assert config["model"]["descriptor"]["cutoff"] == 4.0
    assert len(config["model"]["descriptor"]["radial"][0]) == 4  # the YAML's tiny grid
    assert config["model"]["ridge"] == 1e-6
    run = json.loads((out / "run.json").read_text())
    assert run["n_train"] == 12


def test_eval_json_matches_ase_calculator(linear_run):
    result, out, test_file = linear_run
    assert result.returncode == 0, result.stderr
    evaluated = mlpot_cli("eval", out / "model", test_file, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = [line for line in evaluated.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert {"energy_mae", "energy_rmse", "force_mae", "force_rmse", "n_structures"} <= set(
        metrics)

    # independent: ASE reads the file and the ASE calculator predicts, frame by frame
    calculator = mlpot.Calculator(out / "model")
    energy_errors, force_errors = [], []
    for atoms in ase.io.read(test_file, index=":"):
        reference_energy = atoms.get_potential_energy()
        reference_forces = atoms.get_forces()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - reference_energy)
                             / len(atoms) * 1000)
        force_errors.append((atoms.get_forces() - reference_forces).ravel() * 1000)
    energy_errors = np.array(energy_errors)
    force_errors = np.concatenate(force_errors)
    assert metrics["n_structures"] == 8
    assert metrics["energy_mae"] == pytest.approx(np.mean(np.abs(energy_errors)), rel=1e-8)
    assert metrics["energy_rmse"] == pytest.approx(np.sqrt(np.mean(energy_errors**2)), rel=1e-8)
    assert metrics["force_mae"] == pytest.approx(np.mean(np.abs(force_errors)), rel=1e-8)
    assert metrics["force_rmse"] == pytest.approx(np.sqrt(np.mean(force_errors**2)), rel=1e-8)
    assert metrics["energy_mae"] > 0 and metrics["force_mae"] > 0
    # metrics.json of the run holds the same numbers for the same test file
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["test_small"]["force_rmse"] == pytest.approx(
        metrics["force_rmse"], rel=1e-8)


def test_eval_of_an_hdf5_file_streams_and_matches_the_xyz(linear_run, acac_dir, tmp_path):
    """`mlpot eval` on the converted file (isolated atoms inside, skipped as for the xyz) gives
    the xyz's metrics, and reads at most --batch-size frames at a time."""
    from mlpot.data.ondisk import HDF5Frames
    from mlpot.train.metrics import evaluate
    from mlpot.uncertainty.ensemble import load_model

    result, out, test_file = linear_run
    assert result.returncode == 0, result.stderr
    both = tmp_path / "both.xyz"
    both.write_text(test_file.read_text() + (acac_dir / "isolated_atoms.xyz").read_text())
    h5 = tmp_path / "both.h5"
    assert mlpot_cli("data", "convert", both, h5).returncode == 0
    runs = [mlpot_cli("eval", out / "model", path, "--json", "--batch-size", "3")
            for path in (test_file, h5)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    from_xyz, from_h5 = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert from_h5["n_structures"] == 8
    assert from_h5 == pytest.approx(from_xyz, rel=1e-12)

    class CountingReads(HDF5Frames):
        largest = 0

        def frames_at(self, indices):
            frames = super().frames_at(indices)
            CountingReads.largest = max(CountingReads.largest, len(frames))
            return frames

    frames = CountingReads(h5)
    metrics, predicted = evaluate(load_model(out / "model"), frames[~frames.isolated_mask()],
                                  batch_size=3, keep=False)
    assert predicted is None and CountingReads.largest == 3
    assert metrics == pytest.approx(from_xyz, rel=1e-12)


def test_md_writes_trajectory_and_log(linear_run, acac_dir, tmp_path):
    result, out, test_file = linear_run
    assert result.returncode == 0, result.stderr
    traj = tmp_path / "md" / "traj.traj"
    md = mlpot_cli("md", out / "model", test_file, "--steps", 20, "--dt", 0.5,
                   "--temperature", 300, "--ensemble", "langevin", "--out", traj)
    assert md.returncode == 0, md.stderr
    assert str(traj) in md.stdout
    frames = ase.io.read(traj, index=":")
    start = ase.io.read(test_file, index=0)
    assert len(frames) == 3  # steps 0, 10, 20 (every 10 steps)
    assert all((f.numbers == start.numbers).all() for f in frames)
    assert not np.allclose(frames[-1].positions, start.positions)
    # the energies stored in the trajectory are the model's for those positions
    calculator = mlpot.Calculator(out / "model")
    for frame in frames[1:]:
        stored = frame.get_potential_energy()
        frame.calc = calculator
        assert frame.get_potential_energy() == pytest.approx(stored, abs=1e-8)
    log_lines = (tmp_path / "md" / "traj.log").read_text().splitlines()
    assert log_lines[0].split()[:2] == ["Time[ps]", "Etot[eV]"]
    assert len(log_lines) == 1 + 3
    assert float(log_lines[-1].split()[0]) == pytest.approx(20 * 0.5 / 1000, abs=1e-4)
    summary = json.loads((tmp_path / "md" / "traj.json").read_text())
    assert summary["steps"] == 20 and summary["ensemble"] == "langevin"
    assert summary["n_atoms"] == 15


def test_unknown_config_key_is_named(acac_dir, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(acac_dir / "train_300K.xyz")},
        "training": {"max_epoch": 3},  # a typo of max_epochs
    }))
    result = mlpot_cli("train", config, "--out", tmp_path / "never")
    assert result.returncode != 0
    assert "max_epoch" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never").exists()


def test_bad_data_file_exits_2_and_names_it(acac_dir, tmp_path):
    bad = acac_head(acac_dir / "train_300K.xyz", tmp_path / "bad.xyz", 3)
    lines = bad.read_text().splitlines()
    lines[LINES + 5] = "C 0.0 this-is-not-a-number 0.0 0.0 0.0 0.0"  # frame 1
    bad.write_text("\n".join(lines) + "\n")
    result = mlpot_cli("train", "--train", bad, "--model", "linear", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert str(bad) in result.stderr and "frame 1" in result.stderr
    assert "Traceback" not in result.stderr
