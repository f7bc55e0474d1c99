"""Time budgets that mean what they say: an ensemble's members share ``max_minutes`` in turn
(the last one gets what the others left), and a resumed run is not charged its descriptor
set-up again."""

import json
import time
from types import SimpleNamespace

import pytest

import mlpot.train.trainer as trainer_module
from mlpot.config import config_from_dict
from mlpot.train.feature_cache import FeatureCache
from mlpot.train.run import member_budget, run_training
from helpers import acac_head, TINY_MODEL


@pytest.fixture(scope="module")
def small_train(acac_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train_30.xyz"
    acac_head(acac_dir / "train_300K.xyz", path, 30)
    return path


def _config(train_file, out, **training):
    return config_from_dict({
        "data": {"train": str(train_file), "valid_fraction": 0.2, "max_train": 16},
        "model": dict(TINY_MODEL),
        "training": {"batch_size": 4, "threads": 1, "lr_schedule": "plateau", **training},
        "seed": 1, "out": str(out)})


def test_member_budget_shares_what_is_left():
    assert member_budget(None, [], 3) is None
    assert member_budget(6.0, [], 3) == 2.0
    assert member_budget(6.0, [{"minutes": 2.5}], 3) == pytest.approx(1.75)
    assert member_budget(6.0, [{"minutes": 2.5}, {"minutes": 1.5}], 3) == pytest.approx(2.0)
    # earlier members overran: the next still gets a sliver, enough for one (part) epoch
    assert member_budget(6.0, [{"minutes": 7.0}], 3) == pytest.approx(0.02)


def test_ensemble_members_share_the_run_budget(small_train, tmp_path):
    total = 0.06  # minutes: 3.6 s for two members
    summary = run_training(_config(small_train, tmp_path / "run", ensemble=2,
                                   max_minutes=total, max_epochs=100000), progress=False)
    first, second = summary["members"]
    assert first["budget_minutes"] == pytest.approx(total / 2)
    assert second["budget_minutes"] == pytest.approx(total - first["minutes"])
    for member in (first, second):  # each stopped by its own share, set-up included
        assert member["stopped_by"] == "time budget"
        assert member["minutes"] >= member["budget_minutes"]
    # the second member uses the first one's descriptor cache (same frames)
    assert 0 < first["setup_minutes"] < first["minutes"] and second["setup_minutes"] == 0
    # together: the budget, give or take the last member's final batch and validation
    assert total <= first["minutes"] + second["minutes"] < total + 0.05
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["members"][1][
        "budget_minutes"] == second["budget_minutes"]


def test_resume_does_not_charge_the_set_up_again(small_train, tmp_path, monkeypatch):
    """A run of 2 epochs, resumed with a 1-minute budget whose descriptor set-up (made to
    look 61 s long by a shifted clock) alone exceeds it: the resumed run still trains."""
    out = tmp_path / "run"
    first = run_training(_config(small_train, out, max_minutes=1, max_epochs=2), progress=False)
    assert first["epochs"] == 2 and first["minutes"] < 0.5

    clock = SimpleNamespace(offset=0.0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(
        monotonic=lambda: time.monotonic() + clock.offset))

    class SlowCache(FeatureCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clock.offset += 61.0

    monkeypatch.setattr(trainer_module, "FeatureCache", SlowCache)
    resumed = run_training(_config(small_train, out, max_minutes=1, max_epochs=4), resume=True,
                           progress=False)
    assert resumed["resumed"] is True and resumed["setup_minutes"] > 1
    assert resumed["epochs"] == 4 and resumed["stopped_by"] == "max_epochs"
    assert resumed["minutes"] < 1  # the budget holds training time and the first set-up
