"""What users look at, through real subprocesses of ``python -m mlpot``: stress errors, the
predictions file of ``mlpot eval --write``, config keys from the command line, ``--version``,
``--help``, progress in a redirected log, and the parity figure's legends."""

import argparse
import json
import typing

import ase.io
import numpy as np
import pytest
from ase import units
from ase.stress import voigt_6_to_full_3x3_stress
from helpers import acac_head, emt_cells, random_bpnn
from test_cli import mlpot_cli

import mlpot

TINY = ["--set", "model.n_radial=4", "--set", "model.n_angular_eta=1", "--set",
        "model.zetas=[1.0]"]


@pytest.fixture(scope="module")
def copper_run(tmp_path_factory):
    """`mlpot train` of a linear model on EMT-labelled periodic cells (energy, forces,
    stress), with a test file."""
    folder = tmp_path_factory.mktemp("copper")
    ase.io.write(folder / "train.xyz", emt_cells(24, 1))
    ase.io.write(folder / "test.xyz", emt_cells(6, 2))
    out = folder / "run"
    result = mlpot_cli("train", "--train", folder / "train.xyz", "--test", folder / "test.xyz",
                       "--model", "linear", "--cutoff", "4.5", "--dtype", "float64",
                       "--set", "data.valid_fraction=0.25", *TINY, "--out", out)
    return result, out, folder / "test.xyz"


def _calculator_errors(model, path):
    """Stress errors of the ASE calculator on ``path``'s frames, over the 9 components of
    each 3×3 stress (eV/Å³): the independent reference."""
    calculator = mlpot.Calculator(model)
    errors = []
    for atoms in ase.io.read(path, index=":"):
        reference = atoms.get_stress()
        atoms.calc = calculator
        errors.append(voigt_6_to_full_3x3_stress(atoms.get_stress())
                      - voigt_6_to_full_3x3_stress(reference))
    return np.concatenate([e.ravel() for e in errors])


@pytest.mark.slow
def test_stress_errors_in_metrics_summary_and_eval(copper_run):
    result, out, test_file = copper_run
    assert result.returncode == 0, result.stderr
    errors = _calculator_errors(out / "model", test_file)
    rmse, mae = np.sqrt(np.mean(errors**2)), np.mean(np.abs(errors))
    assert rmse > 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["test"]
    assert metrics["n_structures_with_stress"] == 6
    assert metrics["stress_rmse"] == pytest.approx(rmse, rel=1e-8)
    assert metrics["stress_mae"] == pytest.approx(mae, rel=1e-8)
    assert metrics["stress_rmse_gpa"] == pytest.approx(rmse / units.GPa, rel=1e-8)
    assert metrics["stress_mae_gpa"] == pytest.approx(mae / units.GPa, rel=1e-8)
    assert f"({metrics['stress_rmse_gpa']:.3f} GPa)" in result.stdout  # end-of-run summary

    as_json = mlpot_cli("eval", out / "model", test_file, "--json")
    assert as_json.returncode == 0, as_json.stderr
    evaluated = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert evaluated["stress_rmse"] == pytest.approx(rmse, rel=1e-8)
    assert evaluated["stress_mae_gpa"] == pytest.approx(mae / units.GPa, rel=1e-8)


def test_molecules_have_no_stress_keys(acac_dir, tmp_path):
    """Frames without stress (molecules) give no stress entries, not zeros."""
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import evaluate

    frames = read_frames(acac_dir / "test_MD_300K.xyz")[:4]
    metrics, predicted = evaluate(random_bpnn(0), frames)
    assert "stress_rmse" not in metrics and predicted["stress"] == [None] * 4


def test_eval_write_holds_the_calculators_predictions(copper_run, tmp_path):
    result, out, test_file = copper_run
    assert result.returncode == 0, result.stderr
    written = tmp_path / "predicted" / "test.xyz"
    run = mlpot_cli("eval", out / "model", test_file, "--write", written)
    assert run.returncode == 0, run.stderr
    assert str(written) in run.stdout
    errors = _calculator_errors(out / "model", test_file)
    line = next(line for line in run.stdout.splitlines() if "stress" in line)  # text summary
    assert f"RMSE {np.sqrt(np.mean(errors**2)) / units.GPa:.3f} GPa" in line and "eV/Å³" in line
    assert sorted(p.name for p in written.parent.iterdir()) == ["test.xyz"]  # no temp left
    calculator = mlpot.Calculator(out / "model")
    references = ase.io.read(test_file, index=":")
    frames = ase.io.read(written, index=":")
    assert len(frames) == len(references) == 6
    for atoms, reference in zip(frames, references):
        np.testing.assert_allclose(atoms.positions, reference.positions, atol=1e-10)
        # the reference labels keep their keys (ASE reads them into its calculator)
        assert atoms.get_potential_energy() == pytest.approx(
            reference.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-12)
        copy = reference.copy()
        copy.calc = calculator
        assert atoms.info["MLPOT_energy"] == pytest.approx(copy.get_potential_energy(),
                                                           abs=1e-9)
        # extxyz writes per-atom columns with 8 decimals
        np.testing.assert_allclose(atoms.arrays["MLPOT_forces"], copy.get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.info["MLPOT_stress"], copy.get_stress(), atol=1e-12)


def test_eval_write_holds_sigma_parts(acac_dir, tmp_path):
    """A model with a variance head: its σ (total and aleatoric) per frame and per atom."""
    from mlpot.data.records import read_frames
    from mlpot.serialize import save
    from mlpot.train.metrics import predict

    potential = random_bpnn(1, head=True)
    save(potential, tmp_path / "model")
    data = acac_head(acac_dir / "test_MD_300K.xyz", tmp_path / "five.xyz", 5)
    written = tmp_path / "out.xyz"
    run = mlpot_cli("eval", tmp_path / "model", data, "--write", written, "--batch-size", 2)
    assert run.returncode == 0, run.stderr
    expected = predict(potential, read_frames(data))
    frames = ase.io.read(written, index=":")
    assert len(frames) == 5
    for k, atoms in enumerate(frames):
        assert "MLPOT_stress" not in atoms.info  # molecules
        for key in ("energy", "energy_std", "energy_std_aleatoric"):
            assert atoms.info["MLPOT_" + key] == pytest.approx(expected[key][k], rel=1e-9)
        for key in ("forces", "forces_std", "forces_std_aleatoric"):
            np.testing.assert_allclose(atoms.arrays["MLPOT_" + key], expected[key][k],
                                       atol=1e-8)  # extxyz: 8 decimals per atom


@pytest.mark.slow
def test_config_keys_from_the_command_line_and_one_log_line_per_epoch(acac_dir, tmp_path):
    """--set, --batch-size and --lr reach the run's config; with output redirected (a pipe,
    not a terminal) training writes one line per epoch and no carriage returns."""
    train = acac_head(acac_dir / "train_300K.xyz", tmp_path / "train.xyz", 16)
    out = tmp_path / "run"
    result = mlpot_cli("train", "--train", train, "--model", "bpnn", "--max-epochs", 3,
                       "--batch-size", 3, "--lr", 0.004, "--set", "training.max_minutes=null",
                       "--set", "model.hidden=[6, 5]", "--set", "training.patience=50",
                       "--set", "training.batch_size=7", *TINY, "--out", out)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["training"]["batch_size"] == 3  # the flag wins over --set
    assert config["training"]["learning_rate"] == 0.004
    assert config["training"]["max_minutes"] is None and config["training"]["patience"] == 50
    assert config["model"]["hidden"] == [6, 5] and config["model"]["n_radial"] == 4
    log = result.stdout + result.stderr
    assert "\r" not in log
    epoch_lines = [line for line in log.splitlines() if line.startswith("train: epoch")]
    assert len(epoch_lines) == 3, log
    assert "3/3 epochs" in epoch_lines[-1]
    assert len(log.splitlines()) < 20, log


@pytest.mark.parametrize("assignment, named", [("training.max_epoch=3", "max_epoch"),
                                               ("seed.value=1", "seed"),
                                               ("training.batch_size", "section.key=value")])
def test_bad_set_is_one_line_error(acac_dir, tmp_path, assignment, named):
    result = mlpot_cli("train", "--train", acac_dir / "train_300K.xyz", "--set", assignment,
                       "--out", tmp_path / "never")
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_version():
    result = mlpot_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mlpot {mlpot.__version__}"


def _actions(parser, name="mlpot"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{name} {choice.dest}", choice
            for command, sub in action.choices.items():
                yield from _actions(sub, f"{name} {command}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


def test_every_argument_has_help_and_choices_come_from_the_config():
    from mlpot.cli import parser
    from mlpot.config import ModelConfig, TrainingConfig

    actions = list(_actions(parser()))
    assert len(actions) > 80
    missing = [(name, action.option_strings or action.dest) for name, action in actions
               if not (action.help or "").strip()]
    assert not missing
    flags = {a.option_strings[0]: a for name, a in actions
             if name == "mlpot train" and a.option_strings}
    assert flags["--model"].choices == list(typing.get_args(
        ModelConfig.model_fields["kind"].annotation))
    assert flags["--device"].choices == list(typing.get_args(
        TrainingConfig.model_fields["device"].annotation))


def test_help_shows_defaults():
    from mlpot.config import TrainingConfig

    train = mlpot_cli("train", "--help")
    assert train.returncode == 0
    text = " ".join(train.stdout.split())  # argparse wraps lines
    batch = TrainingConfig.model_fields["batch_size"].default
    assert f"config training.batch_size; default: {batch})" in text
    assert "--set SECTION.KEY=VALUE" in text
    evaluate = " ".join(mlpot_cli("eval", "--help").stdout.split())
    assert "frames per forward pass (default: 64)" in evaluate
    assert "MLPOT_energy" in evaluate and "MLPOT_forces" in evaluate
    md = " ".join(mlpot_cli("md", "--help").stdout.split())
    assert "(default: 1000)" in md and "(default: 0)" in md  # --steps, --seed


def test_prediction_file_is_written_atomically(tmp_path):
    """An error while predicting leaves an existing file as it was, and no temporary file."""
    from mlpot.train.predictions import PredictionWriter

    path = tmp_path / "out.xyz"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with PredictionWriter(path) as writer:
            writer.add([], {"energy": []})
            raise RuntimeError("model failed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.xyz"]


def test_parity_legends_state_rmse_and_mae(copper_run):
    """The parity figure has a stress panel for periodic data, and each legend entry states
    the set's RMSE and MAE (checked against numpy on the same predictions)."""
    from mlpot import plots
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import evaluate

    result, out, test_file = copper_run
    assert result.returncode == 0, result.stderr
    frames = read_frames(test_file)
    metrics, predicted = evaluate(mlpot.load(out / "model"), frames)
    fig = plots.parity_figure({"valid": [], "test:test": frames}, {"test": predicted})
    energy, forces, stress = fig.axes
    assert "mean reference energy per atom of its set" in energy.get_title()
    n = np.array([len(f) for f in frames])
    energy_error = 1000 * (np.array(predicted["energy"]) - [f.energy for f in frames]) / n
    label = energy.get_legend().get_texts()[0].get_text()
    assert label == (f"test: RMSE {np.sqrt(np.mean(energy_error**2)):.3g}, "
                     f"MAE {np.mean(np.abs(energy_error)):.3g} meV/atom")
    assert f"RMSE {metrics['force_rmse']:.3g}," in forces.get_legend().get_texts()[0].get_text()
    stress_label = stress.get_legend().get_texts()[0].get_text()
    assert stress_label.endswith(f"MAE {metrics['stress_mae_gpa']:.3g} GPa")
    assert (out / "parity.png").is_file()
