"""mlpot.files: atomic writes that keep the old file on any failure (a real full disk: writes
into /dev/full), ordinary permissions, stale temporaries of killed runs removed, and the
output-folder lock (two real processes)."""

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mlpot import files
from mlpot.errors import MlpotError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def full_disk(monkeypatch):
    """Temporary files named ``name`` become symlinks to /dev/full, whose writes fail with the
    kernel's real ENOSPC; every library's writer (Python, h5py, matplotlib) meets it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    original = files.temp_path

    def temp_path(path, suffix=""):
        tmp = original(path, suffix)
        if path.name == "target" or path.suffix in (".h5", ".png", ".pt", ".safetensors"):
            os.symlink("/dev/full", tmp)
        return tmp

    monkeypatch.setattr(files, "temp_path", temp_path)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if files.TEMP_MARK in p.name]


def test_permissions_are_those_of_open(tmp_path):
    """mkstemp's 0o600 would hide outputs from the user's group; results get open()'s mode."""
    old = os.umask(0o027)
    try:
        files.write_json_atomic(tmp_path / "a.json", {"x": 1})
        with files.atomic_folder(tmp_path / "folder") as folder:
            files.write_text_atomic(folder / "b.txt", "b")
        open(tmp_path / "reference", "w").close()
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "reference").stat().st_mode)
    assert expected == 0o640
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "folder" / "b.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750


@pytest.mark.parametrize("writer", ["text", "checkpoint", "hdf5", "figure", "model", "bytes"])
def test_full_disk_keeps_the_old_file_and_names_the_path(writer, tmp_path, full_disk):
    from helpers import random_bpnn

    target = tmp_path / {"text": "target", "checkpoint": "checkpoint.pt", "hdf5": "data.h5",
                         "figure": "parity.png", "model": "model", "bytes": "target"}[writer]
    if writer == "model":
        (target).mkdir()
        (target / "config.json").write_text("old")
        before = {"config.json": "old"}
    else:
        target.write_text("old")
        before = "old"
    with pytest.raises(OSError) as caught:
        if writer == "text":
            files.write_text_atomic(target, "new" * 1000)
        elif writer == "checkpoint":
            from mlpot.train.trainer import save_checkpoint_atomic

            save_checkpoint_atomic({"w": torch.zeros(1000)}, target)
        elif writer == "hdf5":
            from helpers import frame
            from mlpot.data.ondisk import write_hdf5

            labelled = frame([1, 1], [[0, 0, 0], [0, 0, 0.74]])
            labelled.energy = -31.0
            write_hdf5([labelled] * 50, target)
        elif writer == "figure":
            import matplotlib.pyplot as plt

            from mlpot.plots import save_figure

            figure = plt.figure()
            save_figure(figure, target)
            plt.close(figure)
        elif writer == "model":
            from mlpot.serialize import save

            save(random_bpnn(0), target)
        else:
            from mlpot.files import write_bytes_atomic

            write_bytes_atomic(target, np.zeros(10_000).tobytes())
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value.filename)
    if writer == "model":
        assert {p.name: p.read_text() for p in target.iterdir()} == before
    else:
        assert target.read_text() == before
    assert _leftovers(tmp_path) == []


def test_cli_full_disk_and_read_only_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """cli.main turns an OSError into `error: PATH: reason` and exit 2 (in-process: the
    failures are injected where the kernel would report them)."""
    from helpers import random_bpnn

    from mlpot import cli
    from mlpot.serialize import save

    save(random_bpnn(0), tmp_path / "a")
    save(random_bpnn(1), tmp_path / "b")
    out = tmp_path / "ensemble"
    real_replace = os.replace

    def read_only(source, target, *args, **kwargs):
        if str(target) == str(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", read_only)
    code = cli.main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {out}: Read-only file system")
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(files.os, "replace", real_replace)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    code = cli.main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "No space left on device" in err and str(tmp_path) in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_write_leaves_no_temporary_and_old_content(tmp_path):
    target = tmp_path / "state.json"
    files.write_json_atomic(target, {"old": True})
    with pytest.raises(TypeError):
        files.write_json_atomic(target, {"new": object()})  # not JSON-able, half written
    assert json.loads(target.read_text()) == {"old": True}
    assert _leftovers(tmp_path) == []


def test_temporaries_of_killed_processes_are_removed(tmp_path):
    """A process killed mid-write leaves its temporary; the next write into the folder
    removes it, but never a live process's."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mlpot import files
        with files.atomic_path(Path({str(tmp_path)!r}) / "checkpoint.pt") as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env=ENV)
    assert killed.returncode == -9
    stale = _leftovers(tmp_path)
    assert len(stale) == 1
    live = files.temp_path(tmp_path / "other")  # this (live) process's temporary
    live.write_text("in progress")
    files.write_text_atomic(tmp_path / "log.csv", "a,b\n")
    assert _leftovers(tmp_path) == [live.name]


LOCK_HOLDER = """
import sys, time
from mlpot.files import locked_folder
with locked_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_run_into_a_locked_folder_fails_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MlpotError, match=f"{tmp_path}.*process {holder.pid}"):
            with files.locked_folder(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with files.locked_folder(tmp_path):  # the dead holder's lock is gone
        pass


def test_cli_train_into_a_folder_in_use(tmp_path, acac_dir):
    """`mlpot train --out DIR` while another process holds DIR: exit 2 at once, one line
    naming the folder; nothing of the running one's is touched."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "run.json").write_text("theirs")
        result = subprocess.run([sys.executable, "-m", "mlpot", "train", "--train",
                                 str(acac_dir / "train_300K.xyz"), "--model", "linear",
                                 "--out", str(tmp_path)], capture_output=True, text=True,
                                env=ENV, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(tmp_path) in result.stderr
    assert f"process {holder.pid}" in result.stderr
    assert (tmp_path / "run.json").read_text() == "theirs"


@pytest.mark.parametrize("args", [["eval", "M", "F", "--batch-size", "-3"],
                                  ["eval", "M", "F", "--batch-size", "0"],
                                  ["data", "convert", "a.xyz", "b.h5", "--progress-every", "0"],
                                  ["label", "s.xyz", "--engine", "xtb", "--db", "x.db",
                                   "--workers", "-1"]])
def test_nonsense_counts_are_refused(args, capsys):
    from mlpot import cli

    with pytest.raises(SystemExit) as caught:
        cli.main(args)
    assert caught.value.code == 2
    assert "must be ≥ 1" in capsys.readouterr().err
