"""Δ-learning: targets are the differences of two levels stored for the same structures; a
Δ-model's folder names its baseline, and the calculator and `mlpot eval` add the baseline
engine's own energy and forces back."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.io import write

from mlpot.config import config_from_dict
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.errors import DataError
from mlpot.label.delta import delta_frames
from mlpot.label.engines import ASEEngine
from mlpot.label.runner import label_structures
from mlpot.serialize import load
from mlpot.train.run import run_training

pytest.importorskip("dask.distributed")
HIGH = ASEEngine("ase.calculators.emt:EMT")
LOW = ASEEngine("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.4, "rc": 6.0})


def _clusters(n, seed):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = Icosahedron("Cu", 2)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("delta")
    db = folder / "labels.db"
    clusters = _clusters(24, 0)
    for engine in (HIGH, LOW):
        label_structures(clusters, engine, db, workers=1, progress=False)
    return folder, db, clusters


def test_delta_targets_are_level_differences(labelled):
    _, db, clusters = labelled
    frames = delta_frames(db, HIGH.level, LOW.level)
    assert len(frames) == len(clusters)
    for frame in frames[:3]:
        atoms = frame.to_atoms()
        high, low = atoms.copy(), atoms.copy()
        high.calc, low.calc = EMT(), LennardJones(sigma=2.3, epsilon=0.4, rc=6.0)
        assert frame.energy == pytest.approx(
            high.get_potential_energy() - low.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(frame.forces, high.get_forces() - low.get_forces(),
                                   atol=1e-9)



def test_a_structure_without_baseline_is_named(tmp_path):
    db = tmp_path / "partial.db"
    clusters = _clusters(3, 1)
    label_structures(clusters, HIGH, db, workers=1, progress=False)
    label_structures(clusters[:2], LOW, db, workers=1, progress=False)
    with pytest.raises(DataError, match="no 'ase/lennardjones' label.*row 3"):
        delta_frames(db, HIGH.level, LOW.level)


def test_delta_model_adds_its_baseline(labelled):
    folder, db, clusters = labelled
    config = config_from_dict({"data": {"train": str(db), "db_select": f"level={HIGH.level}",
                                        "delta_baseline": LOW.level, "valid_fraction": 0.2,
                                        "test": [str(db)]},
                               "model": {"kind": "bpnn", "size": "small", "cutoff": 4.5},
                               "training": {"max_epochs": 3, "threads": 1},
                               "out": str(folder / "run")})
    summary = run_training(config, progress=False)
    model_dir = folder / "run" / "model"
    baseline = json.loads((model_dir / "metadata.json").read_text())["baseline"]
    assert baseline["level"] == LOW.level and baseline["arguments"]["sigma"] == 2.3
    atoms = clusters[5].copy()
    atoms.calc = MlpotCalculator(str(model_dir))
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    delta = MlpotCalculator(load(model_dir))  # the bare Δ-model
    low = atoms.copy()
    low.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=6.0)
    bare = atoms.copy()
    bare.calc = delta
    assert energy == pytest.approx(bare.get_potential_energy() + low.get_potential_energy(),
                                   abs=1e-8)
    np.testing.assert_allclose(forces, bare.get_forces() + low.get_forces(), atol=1e-8)

    # mlpot eval on plain high-level labels reports the same error as training did on Δ
    high_frames = [c.copy() for c in clusters]
    for c in high_frames:
        c.calc = EMT()
        c.get_forces()
    write(folder / "high.xyz", high_frames)
    out = subprocess.run([sys.executable, "-m", "mlpot", "eval", str(model_dir),
                          str(folder / "high.xyz"), "--json"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["force_rmse"] == pytest.approx(summary["metrics"]["labels"]["force_rmse"],
                                                 rel=1e-4)
