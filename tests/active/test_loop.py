"""`mlpot learn` end to end with a real engine (GFN2-xTB) and a real local Dask cluster:
labels, warm-started ensembles, exploration and selection per iteration; a second command
resumes where the first stopped and labels only the new selections."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from mlpot.label.engines import XTBEngine
from mlpot.label.store import LabelStore, structure_key

pytest.importorskip("tblite")
pytest.importorskip("dask.distributed")


def _ethanols(n, shift, seed, labelled=False):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, shift, atoms.positions.shape)
        if labelled:
            label = XTBEngine().label(atoms)
            atoms.calc = SinglePointCalculator(atoms, energy=label.energy, forces=label.forces)
        frames.append(atoms)
    return frames


def test_learn_runs_resumes_and_labels_only_selections(tmp_path):
    """Two commands (1 iteration, then 3): the second resumes at iteration 1."""
    write(tmp_path / "start.xyz", _ethanols(6, 0.05, 0))
    write(tmp_path / "test.xyz", _ethanols(8, 0.08, 1, labelled=True))
    config = {"start": "start.xyz", "test": "test.xyz", "out": "run",
              "engine": {"kind": "xtb"}, "model": {"kind": "bpnn", "size": "small"},
              "training": {"ensemble": 2, "max_epochs": 3, "max_minutes": None,
                           "threads": 1},
              "explore": {"trajectories": 2, "steps": 30, "interval": 10,
                          "temperature": 300, "stop_sigma": 1e6},
              "select": {"force_sigma": 1e-4, "max_new": 3}, "iterations": 1, "workers": 1}
    path = tmp_path / "learn.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def learn(iterations):
        path.write_text(yaml.safe_dump({**config, "iterations": iterations}))
        done = subprocess.run([sys.executable, "-m", "mlpot", "learn", str(path)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = learn(1)
    assert first["iterations"] == 1 and first["labels"] == 6
    run = tmp_path / "run"
    second = learn(3)  # resumes at iteration 1
    state = json.loads((run / "state.json").read_text())
    assert [h["iteration"] for h in state["history"]] == [0, 1, 2]
    assert second["iterations"] == 3
    selected = [read(run / f"iter_0{k}" / "selected.xyz", index=":") for k in (1, 2)]
    for k, picks in zip((1, 2), selected):
        assert 1 <= len(picks) <= 3 and state["history"][k]["labelled_now"] == len(picks)
        assert state["history"][k]["selected"] == len(picks)
    keys = {row.structure_key for row in LabelStore(run / "labels.db").rows()}
    picked = {structure_key(a) for picks in selected for a in picks}
    assert keys >= picked and len(keys) == 6 + len(picked) == second["labels"]
    members = json.loads((run / "iter_02" / "train" / "members" / "member_0" / "model" /
                          "metadata.json").read_text())
    assert members["init_model"].endswith("iter_01/train/model/member_0")
    assert state["history"][2]["test_force_rmse"] > 0
    assert (run / "learning.png").exists()


def test_learn_selects_from_a_pool(tmp_path):
    """With explore.pool the candidates are the pool's structures, scored by the ensemble."""
    write(tmp_path / "start.xyz", _ethanols(5, 0.05, 2))
    pool = _ethanols(12, 0.1, 3)
    write(tmp_path / "pool.xyz", pool)
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump({
        "start": "start.xyz", "out": "run", "engine": {"kind": "xtb"},
        "model": {"kind": "bpnn", "size": "small"},
        "training": {"ensemble": 2, "max_epochs": 2, "max_minutes": None, "threads": 1},
        "explore": {"pool": "pool.xyz"}, "select": {"force_sigma": 1e-4, "max_new": 4},
        "iterations": 2, "workers": 1}))
    done = subprocess.run([sys.executable, "-m", "mlpot", "learn", str(path)],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr
    picks = read(tmp_path / "run" / "iter_01" / "selected.xyz", index=":")
    pool_keys = {structure_key(a) for a in read(tmp_path / "pool.xyz", index=":")}
    assert len(picks) == 4 and {structure_key(a) for a in picks} <= pool_keys
    selection = json.loads((tmp_path / "run" / "iter_01" / "selection.json").read_text())
    assert selection["candidates"] == 12
