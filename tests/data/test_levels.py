"""Labels of different levels of theory do not mix: a label database holding two levels is
refused for training and evaluation unless one level is selected (``--select`` /
``data.db_select``); Δ-learning uses both on purpose. Databases are written the way
`mlpot label` writes them (LabelStore), with two ASE calculators as the two levels."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ase.cluster import Icosahedron

from mlpot.config import config_from_dict
from mlpot.data.records import read_frames
from mlpot.errors import DataError
from mlpot.label.engines import ASEEngine
from mlpot.label.store import LabelStore, structure_key
from mlpot.train.run import load_data

HIGH = ASEEngine("ase.calculators.emt:EMT")
LOW = ASEEngine("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.4, "rc": 6.0})
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def two_levels(tmp_path_factory):
    """A label database: 6 clusters at the high level, 4 of them also at the low one."""
    db = tmp_path_factory.mktemp("levels") / "labels.db"
    store = LabelStore(db)
    rng = np.random.default_rng(0)
    clusters = []
    for _ in range(6):
        atoms = Icosahedron("Cu", 2)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        clusters.append(atoms)
    for engine, structures in ((HIGH, clusters), (LOW, clusters[:4])):
        for k, atoms in enumerate(structures):
            store.write(atoms, structure_key(atoms), engine.level, engine.describe(),
                        engine.label(atoms), f"clusters:{k}")
    return db


def test_two_levels_are_refused_naming_levels_and_rows(two_levels):
    with pytest.raises(DataError) as caught:
        read_frames(two_levels)
    message = str(caught.value)
    assert str(two_levels) in message and "level" in message
    assert f"{HIGH.level} (6 rows)" in message and f"{LOW.level} (4 rows)" in message
    assert "--select" in message


def test_selecting_one_level_reads_its_rows(two_levels):
    high = read_frames(two_levels, db_select=f"level={HIGH.level}")
    low = read_frames(two_levels, db_select=f"level={LOW.level}")
    assert (len(high), len(low)) == (6, 4)
    assert high[0].energy != pytest.approx(low[0].energy)  # truly the two levels' labels


def test_delta_learning_reads_both_levels_on_purpose(two_levels):
    config = config_from_dict({"data": {"train": str(two_levels),
                                        "db_select": f"level={HIGH.level}",
                                        "delta_baseline": LOW.level, "valid_fraction": 0.25}})
    with pytest.raises(DataError, match="no .* label for this structure"):
        load_data(config)  # two high-level structures lack a baseline: still checked
    selected = config_from_dict({"data": {"train": str(two_levels),
                                          "db_select": f"level={HIGH.level}"}})
    assert len(load_data(selected)["train"]) + len(load_data(selected)["valid"]) == 6


@pytest.mark.slow
def test_cli_train_refuses_then_select_passes_the_level_check(two_levels, tmp_path):
    config = tmp_path / "tiny.yaml"  # a linear fit on a tiny descriptor grid: seconds
    config.write_text(yaml.safe_dump({"model": {"n_radial": 4, "n_angular_eta": 1,
                                                "zetas": [1.0], "ridge": 1e-6}}))

    def train(*extra):
        return subprocess.run([sys.executable, "-m", "mlpot", "train", str(config), "--train",
                               str(two_levels), "--model", "linear", "--cutoff", "3.0",
                               "--out", str(tmp_path / "run"), *extra], capture_output=True,
                              text=True, env=ENV, timeout=300)

    refused = train()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    assert f"{HIGH.level} (6 rows)" in refused.stderr
    chosen = train("--select", f"level={HIGH.level}")
    assert chosen.returncode == 0, chosen.stderr
    assert "5 training, 1 validation frames" in chosen.stdout  # the 6 high-level rows
