"""Labelling on a real local Dask cluster into a real ASE database: results land as they
finish, a restart labels only what is missing (also after kill -9), failures are stored
once with their message, the database trains a model, and the cost ledger adds up."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write

from mlpot.data.records import read_frames
from mlpot.label.engines import PySCFEngine, XTBEngine
from mlpot.label.runner import label_structures
from mlpot.label.store import LabelStore, structure_key

pytest.importorskip("dask.distributed")
pytest.importorskip("pyscf")


def _waters(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    return frames


def test_local_cluster_labels_once_and_resumes(tmp_path):
    db = tmp_path / "labels.db"
    waters = _waters(5)
    engine = PySCFEngine("hf", "sto-3g")
    first = label_structures(waters[:3], engine, db, workers=2, progress=False)
    assert first["written"] == 3 and first["failed"] == 0
    again = label_structures(waters + waters[:1], engine, db, workers=2, progress=False)
    assert again["submitted"] == 2 and again["written"] == 2  # the duplicate input: once
    store = LabelStore(db)
    rows = store.rows(level=engine.level)
    assert sorted(r.structure_key for r in rows) == sorted(structure_key(a) for a in waters)
    for row in rows:  # the stored label is the engine's own result for that structure
        atoms = next(a for a in waters if structure_key(a) == row.structure_key)
        assert row.energy == pytest.approx(engine.label(atoms).energy, abs=1e-7)
        assert row.cpu_seconds > 0 and row.method == "hf" and row.basis == "sto-3g"
    # another level of the same structures goes beside them, not over them
    label_structures(waters[:2], PySCFEngine("mp2", "sto-3g"), db, workers=1, progress=False)
    assert len(store.rows()) == 7
    frames = read_frames(db, db_select="level=pyscf/mp2/sto-3g")
    assert len(frames) == 2 and frames[0].forces.shape == (3, 3)


def test_failures_are_stored_once_and_retried_only_when_asked(tmp_path):
    db = tmp_path / "labels.db"
    waters = _waters(2, seed=1)
    stubborn = PySCFEngine("hf", "sto-3g", max_cycle=1)
    summary = label_structures(waters, stubborn, db, workers=1, progress=False)
    assert summary["failed"] == 2
    rows = LabelStore(db).rows()
    assert all(r.failed and "not converged" in r.data["error"] for r in rows)
    assert label_structures(waters, stubborn, db, workers=1, progress=False)["submitted"] == 0
    with pytest.raises(Exception, match="no structures"):  # failed rows are not training data
        read_frames(db)
    fixed = label_structures(waters, PySCFEngine("hf", "sto-3g", max_cycle=1), db, workers=1,
                             retry_failed=True, progress=False)
    assert fixed["submitted"] == 2 and len(LabelStore(db).rows()) == 2


def test_kill_9_mid_run_then_restart_labels_each_structure_once(tmp_path):
    pytest.importorskip("tblite")
    rng = np.random.default_rng(2)
    structures = []
    for _ in range(40):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.04, atoms.positions.shape)
        structures.append(atoms)
    inputs = tmp_path / "ethanol.xyz"
    write(inputs, structures)
    db = tmp_path / "labels.db"
    command = [sys.executable, "-m", "mlpot", "label", str(inputs), "--engine", "xtb",
               "--db", str(db), "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some, not all, labels are stored
        time.sleep(0.05)
        if db.exists():
            try:
                stored = LabelStore(db).db.count()
            except Exception:  # the writer may hold the lock for a moment
                continue
            if 3 <= stored < 40:
                break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = LabelStore(db).db.count()
    assert 3 <= partial < 40, partial
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == 40 - partial
    keys = [row.structure_key for row in LabelStore(db).rows()]
    from ase.io import read

    assert len(keys) == 40 and set(keys) == {structure_key(a) for a in read(inputs, ":")}
    assert XTBEngine().level == summary["level"]


def test_report_cli_ledger_and_model_speedup(tmp_path, acac_dir):
    db = tmp_path / "labels.db"
    label_structures(_waters(3, seed=3), PySCFEngine("hf", "sto-3g"), db, workers=1,
                     progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "mlpot", "report", str(db), "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (level,) = report["levels"]
    cpu = [r.cpu_seconds for r in LabelStore(db).rows()]
    assert level["labels"] == 3 and level["cpu_hours"] == pytest.approx(sum(cpu) / 3600)
    # a model trained on these labels: its cost per prediction and the speed-up
    run = subprocess.run([sys.executable, "-m", "mlpot", "train", "--train", str(db),
                          "--model", "linear", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    text = subprocess.run([sys.executable, "-m", "mlpot", "report", str(db), "--model",
                           str(tmp_path / "run" / "model")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "pyscf/hf/sto-3g: 3 labels (0 failed)" in text.stdout and "faster" in text.stdout


class _Crashing:
    """An engine whose worker process dies (as a segfaulting or OOM-killed code would)."""

    level = "test/crash"

    def describe(self):
        return {"engine": "test", "method": "crash", "basis": ""}

    def label(self, atoms):
        os._exit(1)


def test_a_dead_worker_is_recorded_as_failed(tmp_path):
    from distributed import LocalCluster

    db = tmp_path / "labels.db"
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    try:
        # allowed-failures 0: the scheduler gives up on the task at the first dead worker
        import dask

        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            summary = label_structures(_waters(1), _Crashing(), db,
                                       scheduler=cluster.scheduler_address, progress=False)
    finally:
        cluster.close()
    assert summary["failed"] == 1
    (row,) = LabelStore(db).rows()
    assert row.failed and "worker failed" in row.data["error"]


def test_a_stale_ase_lock_file_does_not_block_a_restart(tmp_path):
    """A writer killed inside ASE's lock leaves DB.lock behind; the store does not use it."""
    db = tmp_path / "labels.db"
    label_structures(_waters(1, seed=5), PySCFEngine("hf", "sto-3g"), db, workers=1,
                     progress=False)
    (tmp_path / "labels.db.lock").touch()  # what kill -9 during an ASE-locked write leaves
    started = time.time()
    summary = label_structures(_waters(2, seed=5), PySCFEngine("hf", "sto-3g"), db, workers=1,
                               progress=False)
    assert summary["written"] == 1 and time.time() - started < 60
