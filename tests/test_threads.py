"""The thread policy (mlpot.threads) and how the command line applies it: an explicit count
wins, then OMP_NUM_THREADS, then the size of the work; OpenMP waits passively in a fresh
``python -m mlpot`` (read back from the OpenMP runtime itself); bad counts and budgets are
one-line errors of the real command line."""

import os
import subprocess
import sys

import pytest

from mlpot.errors import ConfigError
from mlpot.threads import SMALL_WORK_ATOMS, atoms_per_batch, check_threads, choose_threads

ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}


@pytest.fixture
def four_cores(monkeypatch):
    """No OMP_NUM_THREADS, a process allowed on four cores, an idle machine."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.5, 1.0))


def test_small_work_one_thread_large_work_every_core(four_cores):
    assert choose_threads(15) == 1  # MD of acac
    assert choose_threads(SMALL_WORK_ATOMS - 1) == 1
    assert choose_threads(SMALL_WORK_ATOMS) == 4
    assert choose_threads(20_000) == 4  # a large periodic cell


@pytest.mark.parametrize("load, threads", [(0.4, 4), (1.0, 3), (2.6, 1), (9.0, 1)])
def test_large_work_leaves_the_cores_of_other_work(four_cores, monkeypatch, load, threads):
    """Large work takes the cores that the 1-minute load average leaves free (at least one):
    a thread sharing a core with other work would hold up every parallel region."""
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert choose_threads(20_000) == threads
    assert choose_threads(15) == 1


def test_explicit_count_wins_over_env_and_work(four_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(15, explicit=2) == 2
    assert choose_threads(20_000, explicit=1) == 1


def test_user_env_wins_over_work(four_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(15) == 3 and choose_threads(20_000) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a count: as if unset (like libgomp)
    assert choose_threads(15) == 1 and choose_threads(20_000) == 4


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_thread_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="--threads must be a positive integer") as error:
        check_threads(bad)
    assert "\n" not in str(error.value)


def test_atoms_per_batch():
    frames = [[0] * 15, [0] * 5]  # anything with a length
    assert atoms_per_batch(frames, 8) == 80
    assert atoms_per_batch([], 8) == 0


def _openmp_settings(stderr: str) -> dict:
    """The settings libgomp prints at start with OMP_DISPLAY_ENV=VERBOSE. It shows an unset
    wait policy as 'PASSIVE' too: GOMP_SPINCOUNT tells them apart (300000 spins by default,
    0 passive)."""
    settings = {}
    for line in stderr.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep and name.startswith(("OMP_", "GOMP_")):
            settings[name] = value.strip("'")
    return settings


def _run(args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**ENV, "OMP_DISPLAY_ENV": "VERBOSE", **env})


def test_python_m_mlpot_starts_openmp_waiting_passively(tmp_path):
    """`eval` of a missing model imports torch (so OpenMP starts) and then fails cleanly."""
    missing = tmp_path / "missing"
    result = _run(["-m", "mlpot", "eval", str(missing), str(missing)])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert _openmp_settings(result.stderr)["GOMP_SPINCOUNT"] == "0"
    # without mlpot torch's OpenMP keeps its default (spin, then sleep); a user's own policy
    # is left alone
    plain = _run(["-c", "import torch"])
    assert int(_openmp_settings(plain.stderr)["GOMP_SPINCOUNT"]) > 0
    active = _run(["-m", "mlpot", "eval", str(missing), str(missing)], OMP_WAIT_POLICY="ACTIVE")
    assert _openmp_settings(active.stderr)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_import_mlpot_before_torch_waits_passively():
    result = _run(["-c", "import mlpot, torch"])
    assert _openmp_settings(result.stderr)["GOMP_SPINCOUNT"] == "0"


@pytest.mark.parametrize("args, field", [
    (["train", "--max-minutes", "-1"], "training.max_minutes"),
    (["train", "--max-minutes", "inf"], "training.max_minutes"),
    (["train", "--threads", "-2"], "training.threads"),
    (["md", "model", "structure.xyz", "--threads", "-2"], "--threads"),
])
def test_bad_budget_or_threads_is_a_one_line_cli_error(acac_dir, tmp_path, args, field):
    train = ["--train", str(acac_dir / "train_300K.xyz"), "--out", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-m", "mlpot", *args,
                             *(train if args[0] == "train" else [])], capture_output=True,
                            text=True, cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "1"},
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert field in result.stderr
    assert not (tmp_path / "run").exists()  # failed before anything was written
