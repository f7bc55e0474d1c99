"""Last-layer (LLPR) uncertainty: the mean is the model's own, φ and Λ match brute-force
derivatives, σ follows the closed form and the sampled heads, it is larger away from the
training data, and it saves, loads and reaches the calculator."""

import copy

import numpy as np
import pytest
import torch

import mlpot
from mlpot import keys
from mlpot.data.records import Frame, read_frames
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.uncertainty.last_layer import (LastLayerUncertainty, last_layer_features,
                                          last_layer_weights, save_last_layer,
                                          training_precision)
from helpers import acac_head, random_bpnn

CELL = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])


def _last_layers(potential):
    model = potential.model
    return [model.networks[s][-1].weight for s in ("H", "C", "O")]


def _gradient_wrt_last_layer(potential, frame) -> torch.Tensor:
    """∂E/∂w by autograd through the ordinary Potential (the brute-force φ_S)."""
    energy = potential(potential.batch([frame]), forces=False)[keys.ENERGY].sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(energy, _last_layers(potential))])


def _random_covariance(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / n


def test_mean_is_the_potential_and_phi_is_the_last_layer_gradient(acac_frames):
    potential = random_bpnn(1)
    n = last_layer_weights(potential.model).numel()
    wrapped = LastLayerUncertainty(potential, _random_covariance(n), torch.zeros(0, n))
    periodic = Frame(numbers=acac_frames[0].numbers, positions=acac_frames[0].positions,
                     cell=CELL, pbc=np.array([True] * 3))
    for frames, stress in ((acac_frames[:3], False), ([periodic], True)):
        batch = potential.batch(frames)
        ours, reference = wrapped(batch, stress=stress), potential(batch, stress=stress)
        for key in [keys.ENERGY, keys.FORCES] + [keys.STRESS] * stress:
            torch.testing.assert_close(ours[key], reference[key].detach(), rtol=1e-12,
                                       atol=1e-12)
    frame = acac_frames[5]
    phi, _, _ = last_layer_features(potential.model, potential.batch([frame]))
    torch.testing.assert_close(phi.sum(0).detach(), _gradient_wrt_last_layer(potential, frame))


def test_energy_sigma_is_the_quadratic_form_and_local_sigma_sums_features(acac_frames):
    potential = random_bpnn(2)
    n = last_layer_weights(potential.model).numel()
    covariance = _random_covariance(n, 1)
    wrapped = LastLayerUncertainty(potential, covariance, torch.zeros(0, n),
                                   sigma_scale_energy=1.5, sigma_scale_forces=0.5)
    frame = acac_frames[7]
    out = wrapped(potential.batch([frame]))
    g = _gradient_wrt_last_layer(potential, frame)
    assert float(out[keys.ENERGY_STD_EPISTEMIC][0]) == pytest.approx(
        1.5 * float(torch.sqrt(g @ covariance @ g)), rel=1e-10)
    phi, _, _ = last_layer_features(potential.model, potential.batch([frame]))
    local = 0.5 * torch.sqrt(torch.einsum("np,pq,nq->n", phi, covariance, phi)).detach()
    torch.testing.assert_close(out[keys.FORCES_STD_EPISTEMIC][:, 2], local)


def test_head_sigma_is_the_spread_of_models_with_those_last_layers(acac_frames):
    potential = random_bpnn(3)
    n = last_layer_weights(potential.model).numel()
    offsets = 0.05 * torch.randn(5, n, generator=torch.Generator().manual_seed(4),
                                 dtype=torch.float64)
    wrapped = LastLayerUncertainty(potential, _random_covariance(n), offsets,
                                   force_sigma="heads")
    frames = acac_frames[:2]
    out = wrapped(potential.batch(frames))
    head_forces = []
    for offset in offsets:  # brute force: a copy of the model per head, run as usual
        head = copy.deepcopy(potential)
        with torch.no_grad():
            start = 0
            for weight in _last_layers(head):
                weight += offset[start:start + weight.numel()].reshape(weight.shape)
                start += weight.numel()
        head_forces.append(head(head.batch(frames))[keys.FORCES].detach())
    deviation = torch.stack(head_forces) - out[keys.FORCES]
    torch.testing.assert_close(out[keys.FORCES_STD_EPISTEMIC], deviation.pow(2).mean(0).sqrt())


def test_precision_is_energy_and_force_gauss_newton(acac_frames):
    potential = random_bpnn(5)
    frames = acac_frames[:3]
    precision, counts = training_precision(potential, frames, 0.002, 0.05, max_atoms=20)
    expected = 0
    for frame in frames:
        g = _gradient_wrt_last_layer(potential, frame) / (len(frame) * 0.002)
        expected = expected + torch.outer(g, g)
        jacobian = torch.autograd.functional.jacobian(
            lambda r: last_layer_features(
                potential.model, {**potential.batch([frame]), keys.POSITIONS: r})[0].sum(0),
            potential.batch([frame])[keys.POSITIONS]).reshape(len(g), -1) / 0.05
        expected = expected + jacobian @ jacobian.T
    torch.testing.assert_close(precision, expected, rtol=1e-9, atol=1e-9)
    assert counts == {"energies": 3, "force_components": 3 * 3 * len(frames[0])}


@pytest.fixture(scope="module")
def fitted(acac_dir):
    """A briefly trained acac bpnn with its last layer fitted on 300 K frames."""
    from mlpot.config import config_from_dict
    from mlpot.train.run import run_training

    import tempfile
    out = tempfile.mkdtemp(prefix="llpr")
    config = config_from_dict({"data": {"train": str(acac_dir / "train_300K.xyz"),
                                        "isolated_atoms": str(acac_dir / "isolated_atoms.xyz"),
                                        "max_train": 120},
                               "model": {"kind": "bpnn", "size": "small"},
                               "training": {"max_epochs": 6, "last_layer": "heads",
                                            "threads": 1},
                               "out": out})
    summary = run_training(config, progress=False)
    return mlpot.load(f"{out}/model"), summary


def test_sigma_is_larger_out_of_distribution(fitted, acac_dir):
    model, summary = fitted
    assert isinstance(model, LastLayerUncertainty)
    report = summary["last_layer"]
    assert report["observations"]["energies"] == 120
    assert min(t["nll_energy"] for t in report["prior_trials"]) == pytest.approx(
        [t for t in report["prior_trials"] if t["prior"] == report["prior"]][0]["nll_energy"])
    frames = read_frames(acac_dir / "test_MD_300K.xyz")[:40]
    rng = np.random.default_rng(0)
    distorted = [Frame(numbers=f.numbers, positions=f.positions + rng.normal(0, 0.15, (len(f), 3)),
                       cell=f.cell, pbc=f.pbc) for f in frames]
    sigma = {}
    for name, subset in (("300K", frames), ("distorted", distorted)):
        out = model(model.batch(subset))
        sigma[name] = (float(out[keys.ENERGY_STD_EPISTEMIC].mean()),
                       float(out[keys.FORCES_STD_EPISTEMIC].mean()))
    # structures rattled by 0.15 Å lie outside the training data: larger σ
    assert sigma["distorted"][0] > 1.5 * sigma["300K"][0], sigma
    assert sigma["distorted"][1] > 1.2 * sigma["300K"][1], sigma
    assert report["miscalibration_area_forces"] < 0.1  # on validation, after α


def test_save_load_and_calculator(fitted, acac_frames, tmp_path):
    model, _ = fitted
    loaded = mlpot.load(save_last_layer(model, tmp_path / "llpr"))
    batch = model.batch(acac_frames[:2])
    for key, value in model(batch).items():
        torch.testing.assert_close(loaded(batch)[key], value)
    atoms = acac_frames[3].to_atoms()
    atoms.calc = MlpotCalculator(loaded)
    atoms.get_forces()
    results = atoms.calc.results
    assert results["energy_std"] == pytest.approx(results["energy_std_epistemic"])
    assert results["forces_std_epistemic"].shape == (len(atoms), 3)
    assert np.all(results["forces_std"] > 0)


def test_only_for_one_bpnn():
    from mlpot.config import config_from_dict
    from mlpot.models import SchNet
    from mlpot.potential import Potential

    schnet = Potential(SchNet([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=1, n_rbf=4),
                       {"H": 0.0, "C": 0.0, "O": 0.0})
    with pytest.raises(ValueError, match="Behler"):
        LastLayerUncertainty(schnet, torch.eye(2), torch.zeros(0, 2))
    for extra in ({"model": {"kind": "schnet"}}, {"training": {"ensemble": 2}}):
        with pytest.raises(ValueError, match="last_layer"):
            config_from_dict({"data": {"train": "x.xyz"}, **extra,
                              "training": {**extra.get("training", {}), "last_layer": "local"}})


def test_cli_train_last_layer_eval_md(acac_dir, tmp_path):
    """mlpot train --last-layer local, eval --json reports σ, md stops on the force σ."""
    import json
    import os
    import subprocess
    import sys

    train = tmp_path / "train.xyz"
    acac_head(acac_dir / "train_300K.xyz", train, 30)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "mlpot", "train", "--train", str(train),
                          "--isolated-atoms", str(acac_dir / "isolated_atoms.xyz"),
                          "--size", "small", "--max-epochs", "2", "--last-layer", "local",
                          "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    description = json.loads((out / "model" / "last_layer.json").read_text())
    summary = json.loads((out / "metrics.json").read_text())
    assert description["sigma_scale"]["forces"] == summary["last_layer"]["scale"]["forces"]
    fit = summary["last_layer"]["calibration_forces"]  # robust per-atom fit, reported
    assert description["sigma_calibration"]["forces"]["scale"] == fit["scale"]
    assert fit["per_atom"] and fit["observations"] == 2 * 15  # 5 % of 30 frames × 15 atoms
    assert "σ calibration (forces) fitted on 30 validation atoms" in run.stdout
    assert summary["metrics"]["valid"]["force_sigma_epistemic"] > 0

    evaluated = subprocess.run([sys.executable, "-m", "mlpot", "eval", str(out / "model"),
                                str(acac_dir / "test_H_transfer.xyz"), "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["energy_sigma_epistemic"] > 0 and result["energy_sigma_aleatoric"] is None

    md = subprocess.run([sys.executable, "-m", "mlpot", "md", str(out / "model"), str(train),
                         "--steps", "10", "--max-force-sigma", "1e-6", "--out",
                         str(tmp_path / "md.traj")], capture_output=True, text=True, env=env,
                        timeout=300)
    assert md.returncode == 4, md.stderr
