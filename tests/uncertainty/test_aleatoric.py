"""Aleatoric variance heads: the NLL loss in closed form, the head's outputs and file round
trip, and training that recovers a known label noise."""

import copy

import numpy as np
import pytest
import torch

from mlpot import keys
from mlpot.config import TrainingConfig
from mlpot.data.records import Frame
from mlpot.models import SchNet
from mlpot.models.variance import VarianceHead
from mlpot.potential import Potential
from mlpot.serialize import load, save
from mlpot.train.loss import EnergyForceLoss
from mlpot.train.trainer import Trainer

from helpers import load_as_older_format

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}


def _teacher() -> Potential:
    torch.manual_seed(11)
    model = SchNet([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=2, n_rbf=6)
    model.set_statistics(0.3, torch.tensor([-0.4, -1.2, -0.9]))
    return Potential(model, E0).double()


def test_nll_loss_closed_form():
    """Energy: r²/v + ln(v/(Nσ_E)²); forces: per component r²/v + ln(v/σ_F²); β = 0 plain."""
    loss = EnergyForceLoss(sigma_energy=0.01, sigma_force=0.1)
    batch = {keys.N_ATOMS: torch.tensor([2, 1]), keys.ENERGY: torch.tensor([1.0, 2.0]),
             keys.FORCES: torch.zeros(3, 3), keys.HAS_FORCES: torch.tensor([True, True]),
             keys.BATCH: torch.tensor([0, 0, 1])}
    prediction = {keys.ENERGY: torch.tensor([1.1, 1.9]),
                  keys.FORCES: torch.full((3, 3), 0.2),
                  keys.ENERGY_VAR_ALEATORIC: torch.tensor([0.04, 0.01]),
                  keys.FORCES_VAR_ALEATORIC: torch.tensor([0.01, 0.02, 0.04])}
    value, _ = loss(prediction, batch, nll=True, beta=0.0)
    terms = [0.01 / 0.04 + np.log(0.04 / 0.02**2), 0.01 / 0.01 + np.log(0.01 / 0.01**2)]
    for v in (0.01, 0.02, 0.04):
        terms += [0.04 / v + np.log(v / 0.01)] * 3
    assert float(value) == pytest.approx(np.mean(terms), rel=1e-6)
    plain, _ = loss(prediction, batch)  # without nll: the fixed-σ loss, variances ignored
    assert float(plain) == pytest.approx(
        np.mean([(0.05 / 0.01) ** 2, (0.1 / 0.01) ** 2] + [(0.2 / 0.1) ** 2] * 9), rel=1e-6)


def test_head_outputs_round_trip_and_leave_forces_alone(acac_frames, tmp_path):
    teacher = _teacher()
    head = VarianceHead([1, 6, 8], 4.0, sigma_energy=0.001, sigma_force=0.03)
    with_head = Potential(copy.deepcopy(teacher.model), E0, head).double()
    batch = with_head.batch(acac_frames[:3])
    out, plain = with_head(batch), teacher(batch)
    assert torch.equal(out[keys.FORCES], plain[keys.FORCES])  # variances never enter forces
    assert out[keys.ENERGY_VAR_ALEATORIC].shape == (3,)
    assert out[keys.FORCES_VAR_ALEATORIC].shape == (45,)
    assert bool((out[keys.FORCES_VAR_ALEATORIC] > 0).all())
    # initial σ ≈ exp(·)^½ σ_ref: of the order of the reference accuracies
    sigma_f = out[keys.FORCES_STD_ALEATORIC].detach()
    assert 0.003 < float(sigma_f.mean()) < 0.3
    torch.testing.assert_close(out[keys.FORCES_STD], sigma_f)
    save(with_head, tmp_path / "model")
    loaded = load(tmp_path / "model")
    assert loaded.variance_head is not None
    again = loaded(batch)
    for key in (keys.ENERGY, keys.ENERGY_VAR_ALEATORIC, keys.FORCES_VAR_ALEATORIC):
        assert torch.equal(again[key], out[key]), key


def test_older_softplus_heads_still_load(acac_frames, tmp_path):
    """Model files from before the log-variance link (version 5, no "link") read as softplus
    heads: v = σ_ref² softplus(raw), checked against the raw network outputs."""
    head = VarianceHead([1, 6, 8], 4.0, sigma_energy=0.001, sigma_force=0.03, link="softplus")
    loaded = load_as_older_format(Potential(copy.deepcopy(_teacher().model), E0, head).double(),
                                  tmp_path, 5, "variance_head", "link")
    assert loaded.variance_head.link == "softplus"
    batch = loaded.batch(acac_frames[:2])
    raw = loaded.variance_head.raw_outputs(batch).detach()
    v_energy, v_force = loaded.variance_head(batch)
    torch.testing.assert_close(v_force, torch.nn.functional.softplus(raw[:, 1]) * 0.03**2)
    torch.testing.assert_close(v_energy, torch.nn.functional.softplus(raw[:, 0]) * 0.001**2)


def test_training_recovers_known_force_noise(acac_frames, tmp_path):
    """Labels = a teacher model plus Gaussian noise of σ = 0.1 eV/Å on every force component
    and 5 meV/atom on energies (75 meV per structure); the student starts from the teacher
    (its mean is already right), so NLL training must bring the head's σ_F to 0.1 eV/Å
    (±20 %) and σ_E to 75 meV per structure (±30 %: 50 energies estimate it)."""
    torch.set_num_threads(1)
    teacher = _teacher()
    rng = np.random.default_rng(0)
    frames = []
    for frame in acac_frames[:60]:
        out = teacher(teacher.batch([frame]))
        noisy = Frame(numbers=frame.numbers, positions=frame.positions, cell=frame.cell,
                      pbc=frame.pbc)
        noisy.energy = float(out[keys.ENERGY][0]) + rng.normal(0, 0.005 * len(frame))
        noisy.forces = out[keys.FORCES].detach().numpy() + rng.normal(0, 0.1, (len(frame), 3))
        frames.append(noisy)
    head = VarianceHead([1, 6, 8], 4.0, sigma_energy=0.001, sigma_force=0.03)
    student = Potential(copy.deepcopy(teacher.model), E0, head).double()
    from mlpot.train.run import fit_statistics

    fit_statistics(student, frames[:50])
    student.model.load_state_dict(teacher.model.state_dict())  # the mean stays the teacher's
    config = TrainingConfig(max_minutes=None, max_epochs=40, batch_size=5, learning_rate=1e-2,
                            dtype="float64", aleatoric=True, nll_warmup=0.0, beta_nll=0.5,
                            ema_decay=0.0, lr_schedule="plateau")
    Trainer(student, frames[:50], frames[50:], config, tmp_path, progress=False).run()
    out = student(student.batch(frames[50:]))
    sigma_f = float(out[keys.FORCES_VAR_ALEATORIC].mean().sqrt())
    assert sigma_f == pytest.approx(0.1, rel=0.2)
    sigma_e = float(out[keys.ENERGY_VAR_ALEATORIC].mean().sqrt())
    assert sigma_e == pytest.approx(0.005 * 15, rel=0.3)


@pytest.mark.parametrize("kind", ["bpnn", "equivariant"])
def test_statistics_of_model_and_head(acac_frames, kind):
    """fit_statistics standardises the head's G2 features per element without touching the
    model's own statistics (bpnn's descriptor has other features)."""
    from mlpot.config import config_from_dict
    from mlpot.train.run import build_potential, fit_statistics

    config = config_from_dict({"data": {"train": "x.xyz"},
                               "model": {"kind": kind, "size": "small", "cutoff": 4.0},
                               "training": {"aleatoric": True}})
    potential = build_potential(config, [1, 6, 8], E0)
    fit_statistics(potential, acac_frames[:20])
    head = potential.variance_head
    assert head.feature_mean.shape == (3, head.descriptor.n_features)
    assert float(head.feature_std.min()) > 0 and float(head.feature_mean.abs().max()) > 0
    if kind == "bpnn":
        assert potential.model.feature_mean.shape[1] == potential.model.descriptor.n_features
