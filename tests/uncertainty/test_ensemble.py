"""Deep ensembles: mean and epistemic σ equal the members' own predictions, save/load without
pickle, the ASE calculator and MD watchdog see σ, and the command line trains and evaluates
an ensemble end to end."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import yaml

import mlpot
from mlpot import keys
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.dynamics.md import run_md
from mlpot.errors import ModelFileError
from mlpot.models import SchNet
from mlpot.potential import Potential
from mlpot.serialize import save
from mlpot.uncertainty.calibration import SigmaCalibration, fit_calibration
from mlpot.uncertainty.ensemble import Ensemble, load_model, save_ensemble

from helpers import acac_head, random_bpnn

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
CELL = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])


def _member(seed: int, cutoff: float = 4.0) -> Potential:
    torch.manual_seed(seed)
    model = SchNet([1, 6, 8], cutoff=cutoff, n_features=8, n_interactions=2, n_rbf=6)
    model.set_statistics(0.5, torch.tensor([-0.4, -1.2, -0.9]))
    return Potential(model, E0).double().eval()


@pytest.fixture(scope="module")
def ensemble():
    return Ensemble([_member(seed) for seed in (1, 2, 3)]).eval()


def test_mean_and_sigma_are_those_of_the_members(ensemble, acac_frames):
    frames = acac_frames[:3]
    batch = ensemble.batch(frames)
    out = ensemble(batch, stress=False)
    singles = [member(member.batch(frames)) for member in ensemble.members]
    energies = np.array([s[keys.ENERGY].detach().numpy() for s in singles])  # (M, B)
    forces = np.array([s[keys.FORCES].detach().numpy() for s in singles])  # (M, N, 3)
    np.testing.assert_allclose(out[keys.ENERGY].detach(), energies.mean(0), rtol=1e-13)
    np.testing.assert_allclose(out[keys.ENERGY_STD].detach(), energies.std(0), rtol=1e-9)
    np.testing.assert_allclose(out[keys.FORCES].detach(), forces.mean(0), atol=1e-13)
    np.testing.assert_allclose(out[keys.FORCES_STD].detach(), forces.std(0), atol=1e-13)
    np.testing.assert_allclose(out[keys.FORCES_MEMBERS].detach(), forces, atol=0)
    assert float(out[keys.ENERGY_STD].detach().min()) > 1e-3  # different seeds disagree
    # identical members: no epistemic spread at all
    same = Ensemble([_member(1), _member(1)])
    out_same = same(same.batch(frames))
    assert float(out_same[keys.ENERGY_STD].abs().max()) == 0.0
    assert float(out_same[keys.FORCES_STD].abs().max()) == 0.0


def test_members_with_variance_heads_split_total_sigma(acac_frames):
    """Total variance = epistemic (members' spread) + aleatoric (members' mean variance)."""
    from mlpot.models.variance import VarianceHead

    members = []
    for seed in (4, 5):
        member = _member(seed)
        torch.manual_seed(seed)
        member.variance_head = VarianceHead([1, 6, 8], 4.0, 0.001, 0.03).double()
        members.append(member)
    ensemble = Ensemble(members)
    batch = ensemble.batch(acac_frames[:2])
    out = ensemble(batch)
    singles = [m(batch) for m in members]
    aleatoric_e = torch.stack([s[keys.ENERGY_VAR_ALEATORIC] for s in singles]).mean(0)
    aleatoric_f = torch.stack([s[keys.FORCES_VAR_ALEATORIC] for s in singles]).mean(0)
    torch.testing.assert_close(out[keys.ENERGY_STD_ALEATORIC], aleatoric_e.sqrt())
    torch.testing.assert_close(out[keys.FORCES_STD_ALEATORIC][:, 1], aleatoric_f.sqrt())
    torch.testing.assert_close(out[keys.ENERGY_STD] ** 2,
                               out[keys.ENERGY_STD_EPISTEMIC] ** 2 + aleatoric_e)
    torch.testing.assert_close(out[keys.FORCES_STD] ** 2,
                               out[keys.FORCES_STD_EPISTEMIC] ** 2 + aleatoric_f[:, None])


def test_members_must_share_cutoffs():
    with pytest.raises(ValueError, match="share elements and cutoffs"):
        Ensemble([_member(1, cutoff=4.0), _member(2, cutoff=3.5)])
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([_member(1)])


def test_members_of_different_kinds(acac_frames):
    """A bpnn member beside SchNet members: the mean and spread are the members' own, each
    evaluated alone on its own batch; the shared batch carries the bpnn member's triplets
    wherever it stands; bpnn members with different angular cutoffs do not combine."""
    members = [_member(1), random_bpnn(2), _member(3)]
    ensemble = Ensemble(members).eval()
    frames = acac_frames[:3]
    batch = ensemble.batch(frames)
    assert keys.TRIPLETS in batch
    out = ensemble(batch)
    singles = [m(m.batch(frames)) for m in members]
    energies = np.array([s[keys.ENERGY].detach().numpy() for s in singles])
    forces = np.array([s[keys.FORCES].detach().numpy() for s in singles])
    np.testing.assert_allclose(out[keys.ENERGY].detach(), energies.mean(0), rtol=1e-13)
    np.testing.assert_allclose(out[keys.ENERGY_STD].detach(), energies.std(0), rtol=1e-9)
    np.testing.assert_allclose(out[keys.FORCES].detach(), forces.mean(0), atol=1e-12)
    np.testing.assert_allclose(out[keys.FORCES_STD].detach(), forces.std(0), atol=1e-12)
    atoms = frames[0].to_atoms()  # the calculator's skin list serves the bpnn member too
    atoms.calc = MlpotCalculator(ensemble)
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(0)[0], abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0)[:len(atoms)], atol=1e-9)
    other_angular = random_bpnn(4)
    other_angular.model.descriptor.angular_cutoff = 3.0
    with pytest.raises(ValueError, match="share elements and cutoffs"):
        Ensemble([random_bpnn(2), other_angular])


def test_cli_combines_models_of_different_kinds(acac_dir, tmp_path):
    """mlpot ensemble: a bpnn model and a two-member SchNet ensemble become one ensemble of
    three, σ scales fitted on --valid as an independent fit of the plain spread gives;
    a model with another cutoff is refused by name, and nothing is written."""
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import predict

    save(random_bpnn(2), tmp_path / "bpnn")
    save_ensemble(Ensemble([_member(1), _member(3)]), tmp_path / "schnets")
    save(_member(5, cutoff=3.5), tmp_path / "short")
    valid = tmp_path / "valid.xyz"
    acac_head(acac_dir / "test_MD_300K.xyz", valid, 6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "combined"
    run = subprocess.run([sys.executable, "-m", "mlpot", "ensemble", str(tmp_path / "bpnn"),
                          str(tmp_path / "schnets"), "--valid", str(valid), "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ensemble of 3 (bpnn, schnet, schnet)" in run.stdout
    combined = load_model(out)
    assert [m.model.kind for m in combined.members] == ["bpnn", "schnet", "schnet"]
    index = json.loads((out / "ensemble.json").read_text())
    assert index["metadata"]["combined_from"] == [str(tmp_path / "bpnn"),
                                                 str(tmp_path / "schnets")]
    plain = Ensemble(list(combined.members)).eval()  # σ scales 1, per component
    frames = read_frames(valid)
    predicted = predict(plain, frames)
    energy_error = np.array(predicted["energy"]) - [f.energy for f in frames]
    force_error = np.concatenate([p - f.forces for p, f in zip(predicted["forces"], frames)])
    per_atom = np.sqrt(np.mean(np.concatenate(predicted["forces_std"]) ** 2, axis=1))
    structures = np.concatenate([np.full(len(f), k) for k, f in enumerate(frames)])
    for name, (error, sigma) in {"energy": (energy_error, np.array(predicted["energy_std"])),
                                 "forces": (force_error, per_atom)}.items():
        with warnings.catch_warnings():  # 6 energies: too few, shrunk (tested elsewhere)
            warnings.simplefilter("ignore")
            expected, _ = fit_calibration(error, sigma, per_atom=name == "forces",
                                          structures=structures if name == "forces" else None)
        assert index["sigma_scale"][name] == pytest.approx(expected.scale, rel=1e-9)
        assert index["sigma_calibration"][name] == pytest.approx(expected.to_json(), rel=1e-9)
    assert "σ calibration (forces) fitted on 90 " in run.stdout  # 6 frames × 15 atoms
    assert "warning: energy σ: only 6 validation observations" in run.stdout
    refused = subprocess.run([sys.executable, "-m", "mlpot", "ensemble",
                              str(tmp_path / "bpnn"), str(tmp_path / "short"), "--out",
                              str(tmp_path / "never")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert refused.returncode == 2
    assert f"{tmp_path / 'short'}: elements [1, 6, 8], cutoff 3.5" in refused.stderr
    assert not (tmp_path / "never").exists()


def test_save_and_load(ensemble, acac_frames, tmp_path):
    path = save_ensemble(ensemble, tmp_path / "model", {"note": "test"})
    index = json.loads((path / "ensemble.json").read_text())
    assert index["members"] == ["member_0", "member_1", "member_2"]
    loaded = mlpot.load(path)
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 3
    batch = ensemble.batch(acac_frames[:2])
    for key in (keys.ENERGY, keys.ENERGY_STD, keys.FORCES_STD):
        assert torch.equal(loaded(batch)[key], ensemble(batch)[key]), key
    member = mlpot.load(path / "member_1")  # each member is an ordinary model folder
    assert isinstance(member, Potential)
    (path / "ensemble.json").write_text(json.dumps({"format": "mlpot-ensemble",
                                                     "members": ["../elsewhere"]}))
    with pytest.raises(ModelFileError, match="not a folder name"):
        load_model(path)


def test_sigma_scales_apply_and_persist(ensemble, acac_frames, tmp_path):
    scaled = Ensemble(list(ensemble.members), sigma_scale_energy=2.0, sigma_scale_forces=3.0)
    batch = ensemble.batch(acac_frames[:2])
    plain, out = ensemble(batch), scaled(batch)
    torch.testing.assert_close(out[keys.ENERGY_STD], 2.0 * plain[keys.ENERGY_STD])
    torch.testing.assert_close(out[keys.FORCES_STD], 3.0 * plain[keys.FORCES_STD])
    assert torch.equal(out[keys.FORCES], plain[keys.FORCES])
    loaded = load_model(save_ensemble(scaled, tmp_path / "scaled"))
    assert (loaded.sigma_scale_energy, loaded.sigma_scale_forces) == (2.0, 3.0)


def test_old_ensemble_folders_predict_as_before(ensemble, acac_frames, tmp_path):
    """A folder written before σ calibrations were stored (only "sigma_scale") loads and
    predicts σ = scale × the members' spread per component, as it always did."""
    path = save_ensemble(ensemble, tmp_path / "old")
    index = json.loads((path / "ensemble.json").read_text())
    del index["sigma_calibration"]
    index["sigma_scale"] = {"energy": 2.0, "forces": 3.0}
    (path / "ensemble.json").write_text(json.dumps(index))
    loaded = load_model(path)
    frames = acac_frames[:2]
    out = loaded(loaded.batch(frames))
    singles = [member(member.batch(frames)) for member in ensemble.members]
    energies = np.array([s[keys.ENERGY].detach().numpy() for s in singles])
    forces = np.array([s[keys.FORCES].detach().numpy() for s in singles])
    np.testing.assert_allclose(out[keys.ENERGY_STD].detach(), 2.0 * energies.std(0), rtol=1e-9)
    np.testing.assert_allclose(out[keys.FORCES_STD].detach(), 3.0 * forces.std(0), atol=1e-12)


def test_calibrated_force_sigma_is_per_atom(ensemble, acac_frames, tmp_path):
    """With a per-atom calibration, an atom's three components share σ' = map(RMS over x, y, z
    of the members' spread, pooled with its structure's); the map is saved and loaded with the
    ensemble."""
    calibration = SigmaCalibration(2.0, 1.5, 0.05, 0.01, per_atom=True, atom_weight=0.3)
    calibrated = Ensemble(list(ensemble.members), calibration_forces=calibration).eval()
    frames = acac_frames[:2]
    forces = np.array([m(m.batch(frames))[keys.FORCES].detach().numpy()
                       for m in ensemble.members])
    spread = np.sqrt(np.mean(forces.std(0) ** 2, axis=1))
    pooled = []  # each atom's σ² pooled with its structure's mean σ², frame by frame
    for part in np.split(spread, [len(frames[0])]):
        pooled.append(np.sqrt(0.3 * part**2 + 0.7 * np.mean(part**2)))
    expected = 2.0 * 0.05 * (np.maximum(np.concatenate(pooled), 0.01) / 0.05) ** 1.5
    out = calibrated(calibrated.batch(frames))
    np.testing.assert_allclose(out[keys.FORCES_STD].detach(),
                               np.repeat(expected[:, None], 3, 1), rtol=1e-9)
    loaded = load_model(save_ensemble(calibrated, tmp_path / "calibrated"))
    assert loaded.calibration_forces == calibration
    assert torch.equal(loaded(loaded.batch(frames))[keys.FORCES_STD], out[keys.FORCES_STD])



@pytest.mark.parametrize("field, value", [("scale", float("nan")), ("exponent", -1.0),
                                          ("floor", "0.1"), ("atom_weight", 2.0),
                                          ("per_atom", 1), ("reference", 0.0)])
def test_a_damaged_stored_calibration_is_refused(ensemble, tmp_path, field, value):
    """Each field of a stored σ calibration is checked on load: one ModelFileError naming
    ensemble.json and the field, never a model that reports NaN or negative σ."""
    path = save_ensemble(ensemble, tmp_path / "damaged")
    index = json.loads((path / "ensemble.json").read_text())
    index["sigma_calibration"]["forces"][field] = value
    (path / "ensemble.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match=rf"ensemble\.json.*sigma_calibration\.forces\.{field}"):
        load_model(path)

def test_calculator_reports_sigma(ensemble, acac_frames):
    atoms = acac_frames[4].to_atoms()
    atoms.calc = MlpotCalculator(ensemble)
    energy = atoms.get_potential_energy()
    out = ensemble(ensemble.batch([acac_frames[4]]))
    assert energy == pytest.approx(float(out[keys.ENERGY][0]), abs=1e-10)
    results = atoms.calc.results
    assert results["energy_std"] == pytest.approx(float(out[keys.ENERGY_STD][0]), rel=1e-12)
    np.testing.assert_allclose(results["forces_std"], out[keys.FORCES_STD].detach(), atol=1e-14)
    np.testing.assert_array_equal(results["forces_std_epistemic"], results["forces_std"])
    # periodic: stress is the members' mean
    atoms.set_cell(CELL)
    atoms.pbc = True
    stress = atoms.get_stress()
    members = []
    for member in ensemble.members:
        copy = atoms.copy()
        copy.calc = MlpotCalculator(member)
        members.append(copy.get_stress())
    np.testing.assert_allclose(stress, np.mean(members, axis=0), atol=1e-12)


def test_md_watchdog_stops_or_flags(ensemble, acac_frames, tmp_path):
    atoms = acac_frames[5].to_atoms()
    calculator = MlpotCalculator(ensemble)
    stopped = run_md(atoms, calculator, steps=20, interval=5, progress=False,
                     max_force_sigma=1e-6, trajectory=tmp_path / "a.traj")
    assert stopped["stopped"]["uncertain"] and stopped["stopped"]["step"] == 0
    event = stopped["uncertain"][0]
    sigma = np.linalg.norm(calculator.results["forces_std_epistemic"], axis=1)
    assert event["force_sigma"] > 1e-6 and 0 <= event["atom"] < len(atoms)
    # random weights: no physical MD, so short steps and no distance watchdog
    flagged = run_md(atoms, MlpotCalculator(ensemble), steps=20, dt=0.1, interval=5,
                     progress=False, min_distance=None, max_force_sigma=float(np.median(sigma)),
                     on_uncertain="flag")
    assert flagged["stopped"] is None
    assert len(flagged["max_force_sigma_eV_per_A"]) == 5  # steps 0, 5, 10, 15, 20
    assert [e["step"] for e in flagged["uncertain"]] == [
        step for step, s in zip(range(0, 21, 5), flagged["max_force_sigma_eV_per_A"])
        if s > float(np.median(sigma))]
    with pytest.raises(ValueError, match="needs a calculator"):
        run_md(atoms, MlpotCalculator(ensemble.members[0]), steps=2, progress=False,
               max_force_sigma=0.1)


def test_eval_watchdog_sigma_is_what_md_compares(ensemble, acac_frames):
    """force_sigma_max_atom of frames predicted together (a batch: per-atom σ pooled within
    each structure) is the mean of what run_md's watchdog records at step 0 of each frame."""
    from mlpot.train.metrics import predict
    from mlpot.uncertainty.calibration import uncertainty_metrics

    calibrated = Ensemble(list(ensemble.members), calibration_forces=SigmaCalibration(
        1.7, 1.3, 0.02, 0.005, per_atom=True, atom_weight=0.4)).eval()
    frames = acac_frames[:3]
    metrics = uncertainty_metrics(frames, predict(calibrated, frames))
    at_step_0 = [run_md(frame.to_atoms(), MlpotCalculator(calibrated), steps=1, dt=0.1,
                        progress=False, min_distance=None)["max_force_sigma_eV_per_A"][0]
                 for frame in frames]
    assert metrics["force_sigma_max_atom"] == pytest.approx(1000 * np.mean(at_step_0),
                                                            rel=1e-9)
    assert max(at_step_0) * 1000 >= metrics["force_sigma_max_atom_p95"] >= (
        metrics["force_sigma_max_atom"])


def test_cli_ensemble_train_eval_md(acac_dir, tmp_path):
    """mlpot train --ensemble 2, then eval --json reports σ and calibration, md stops on σ."""
    train = tmp_path / "train.xyz"
    acac_head(acac_dir / "train_300K.xyz", train, 20)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(train), "valid_fraction": 0.2,
                 "isolated_atoms": str(acac_dir / "isolated_atoms.xyz")},
        "model": {"kind": "schnet", "cutoff": 4.0, "n_features": 8, "n_interactions": 2},
        "training": {"max_epochs": 1, "max_minutes": None, "batch_size": 4}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "mlpot", "train", str(config), "--ensemble", "2",
                          "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert (out / "model" / "ensemble.json").exists()
    assert (out / "members" / "member_1" / "log.csv").exists()
    assert (out / "calibration.png").stat().st_size > 1000
    summary = json.loads((out / "metrics.json").read_text())
    metrics = summary["metrics"]["valid"]
    assert metrics["force_sigma_epistemic"] > 0 and metrics["nll"] is not None
    assert (f"largest atomic force σ per structure {metrics['force_sigma_max_atom']:.1f} meV/Å"
            in run.stdout)
    # σ recalibrated on the validation frames, the factors stored with the ensemble
    scales = json.loads((out / "model" / "ensemble.json").read_text())["sigma_scale"]
    report = summary["recalibration"]
    assert scales == {"energy": report["energy"]["scale"], "forces": report["forces"]["scale"]}
    assert report["forces"]["miscalibration_area_after"] <= (
        report["forces"]["miscalibration_area_before"] + 1e-9)

    evaluated = subprocess.run([sys.executable, "-m", "mlpot", "eval", str(out / "model"),
                                str(acac_dir / "test_H_transfer.xyz"), "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    for key in ("energy_sigma_epistemic", "energy_sigma_aleatoric", "force_sigma_epistemic",
                "force_sigma_aleatoric", "spearman_force", "nll", "force_sigma_max_atom",
                "force_sigma_max_atom_p95"):
        assert key in result
    assert result["energy_sigma_epistemic"] > 0
    text = subprocess.run([sys.executable, "-m", "mlpot", "eval", str(out / "model"),
                           str(acac_dir / "test_H_transfer.xyz")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert (f"largest atomic force σ per structure {result['force_sigma_max_atom']:.1f} meV/Å"
            f" (95 %: {result['force_sigma_max_atom_p95']:.1f}): what md --max-force-sigma "
            "compares") in text.stdout

    md = subprocess.run([sys.executable, "-m", "mlpot", "md", str(out / "model"), str(train),
                         "--steps", "10", "--max-force-sigma", "1e-6", "--out",
                         str(tmp_path / "md.traj")], capture_output=True, text=True, env=env,
                        timeout=300)
    assert md.returncode == 4, md.stderr
    assert "epistemic force σ" in md.stderr and "uncertain: step 0" in md.stderr
