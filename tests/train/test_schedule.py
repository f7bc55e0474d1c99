"""Learning-rate schedules of the trainer."""

import math
import time

import pytest

from mlpot.config import TrainingConfig
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models import BehlerParrinello
from mlpot.potential import Potential
from mlpot.train.trainer import Trainer


def small_bpnn(elements) -> Potential:
    descriptor = SymmetryFunctions(elements, cutoff=4.0, radial=default_radial(4.0, 4),
                                   angular=default_angular(4.0, 1, (1.0,)))
    e0 = {"H": -13.6, "C": -1026.8, "O": -2037.8}
    return Potential(BehlerParrinello(descriptor, hidden=[8]), e0).double()


def test_cosine_schedule_follows_training_time(acac_frames, tmp_path):
    """With lr_schedule cosine the rate is a function of elapsed time over the budget."""
    potential = small_bpnn([1, 6, 8])
    config = TrainingConfig(max_minutes=10, lr_schedule="cosine", learning_rate=1e-3,
                            min_learning_rate=1e-5, dtype="float64")
    trainer = Trainer(potential, acac_frames[:4], acac_frames[4:6], config, tmp_path,
                      progress=False)
    for fraction in (0.0, 0.25, 0.5, 1.0, 1.5):
        trainer.elapsed = fraction * 600
        trainer._set_cosine_rate(started=time.monotonic())
        expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * min(fraction, 1)))
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="max_minutes or, without a time budget, over max_epochs"):
        TrainingConfig(max_minutes=None, lr_schedule="cosine")


def test_cosine_schedule_over_epochs_without_a_time_budget(acac_frames, tmp_path):
    """Without max_minutes the cosine runs over max_epochs, step by step: the k-th of K
    optimizer steps uses the formula's rate at the fraction k / K of the budget."""
    potential = small_bpnn([1, 6, 8])
    config = TrainingConfig(max_minutes=None, max_epochs=3, lr_schedule="cosine",
                            learning_rate=1e-3, min_learning_rate=1e-5, batch_size=2,
                            dtype="float64", ema_decay=0.0)
    trainer = Trainer(potential, acac_frames[:6], acac_frames[6:8], config, tmp_path,
                      progress=False)
    rates = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    trainer.run()
    steps = 3 * 3  # 3 epochs of 6 frames in batches of 2
    expected = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * k / steps))
                for k in range(steps)]
    assert rates == pytest.approx(expected, rel=1e-9)


def test_a_budget_spent_in_setup_still_trains_one_short_epoch(acac_frames, tmp_path):
    """Setup (e.g. the feature cache on a busy machine) took the whole time budget: one epoch,
    cut short after its first batch, is still trained and its model saved."""
    from mlpot.serialize import load

    config = TrainingConfig(max_minutes=1, batch_size=2, dtype="float64")
    trainer = Trainer(small_bpnn([1, 6, 8]), acac_frames[:6], acac_frames[6:8], config,
                      tmp_path, progress=False)
    trainer.setup_seconds = 120.0
    summary = trainer.run()
    assert summary["epochs"] == 1 and summary["stopped_by"] == "time budget"
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 1  # one batch of three
    assert load(tmp_path / "model") is not None
