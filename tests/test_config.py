"""Model sizes: ``model.size`` fills every architecture setting left out, explicit values win,
the command line's ``--size`` reaches the saved model, and an unknown size is refused."""

import json
import os
import subprocess
import sys

import pytest

from mlpot.config import SIZE_PRESETS, config_from_dict
from mlpot.errors import ConfigError
from mlpot.models import MODEL_KINDS
from mlpot.train.run import build_potential

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_every_kind_has_three_sizes_that_grow(kind):
    """Each kind builds at every size, and small < medium < large in parameters."""
    counts = []
    for size in ("small", "medium", "large"):
        config = config_from_dict({"data": {"train": "x.xyz"},
                                   "model": {"kind": kind, "size": size}})
        assert config.model.architecture() == SIZE_PRESETS[kind][size]
        potential = build_potential(config, [1, 6, 8], E0)
        counts.append(sum(p.numel() for p in potential.parameters()))
    if kind != "linear":  # the linear model's weights are fitted later, sized by descriptors
        assert counts[0] < counts[1] < counts[2], counts


def test_explicit_settings_win_over_the_preset():
    config = config_from_dict({"data": {"train": "x.xyz"},
                               "model": {"kind": "equivariant", "size": "large", "l_max": 1}})
    assert config.model.l_max == 1 and config.model.n_features == 64  # rest from "large"
    model = build_potential(config, [1, 8], {"H": -13.6, "O": -2037.8}).model
    assert model.l_max == 1 and model.n_features == 64
    with pytest.raises(ConfigError, match="model.size"):
        config_from_dict({"data": {"train": "x.xyz"}, "model": {"size": "huge"}})


def test_cli_size_reaches_the_saved_model(acac_dir, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mlpot", "train", "--train", str(acac_dir / "train_300K.xyz"),
         "--model", "equivariant", "--size", "small", "--max-epochs", "1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600, input="")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "model" / "config.json").read_text())["model"]
    small = SIZE_PRESETS["equivariant"]["small"]
    assert {key: saved[key] for key in small} == small


def test_linear_ensemble_needs_bootstrap():
    with pytest.raises(ConfigError, match="bootstrap"):
        config_from_dict({"data": {"train": "x.xyz"}, "model": {"kind": "linear"},
                          "training": {"ensemble": 3}})
    config = config_from_dict({"data": {"train": "x.xyz"}, "model": {"kind": "linear"},
                               "training": {"ensemble": 3, "bootstrap": True}})
    assert config.training.ensemble == 3
