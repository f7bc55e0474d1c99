"""Writing output files safely: atomic replacement, ordinary permissions, folder locks.

Every file and folder mlpot writes goes through :func:`atomic_path` (or the helpers built on
it): the content is written to a temporary name in the destination's folder, flushed to disk
(fsync) and renamed over the destination, so a reader, a crash or a full disk never leaves a
half-written file, and the old file stays intact until the new one is complete. On any error
the temporary is removed. The result gets the permissions ``open()`` would give
(0o666 & ~umask for files, 0o777 & ~umask for folders), not the 0o600 of ``mkstemp``.

Temporary names carry a mark, the writing process's id and a host tag
(``.NAME.mlpot-tmp-PID-HOST-RANDOM[.suffix]``). A killed run cannot remove its temporaries;
the next write into the same folder removes those of dead processes on this host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from mlpot.errors import MlpotError

TEMP_MARK = ".mlpot-tmp-"
_TEMP_PATTERN = re.compile(re.escape(TEMP_MARK) + r"(\d+)-([0-9a-f]{8})-")
LOCK_FILE = ".mlpot.lock"


class FolderInUseError(MlpotError):
    """Another mlpot process is writing into the same output folder."""


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def umask() -> int:
    """The process's umask (read without a window in which it is changed, where Linux
    reports it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_path(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` (not created)."""
    tag = f"{TEMP_MARK}{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}{tag}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporaries left in ``folder`` by dead processes of this host; returns them."""
    removed, host = [], _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.search(entry.name)
        if not entry.name.startswith(".") or match is None or match.group(2) != host:
            continue
        if int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (a file, by any
    library); when the block ends without error it is synced, given ordinary permissions and
    renamed to ``path``. On error it is removed and ``path`` is untouched. ``suffix``: an
    extension the writing library insists on (e.g. ``.pt2``)."""
    path = Path(path)
    with _temporary(path, suffix) as tmp:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    _fsync(path.parent)


@contextlib.contextmanager
def _temporary(path: Path, suffix: str = "") -> Iterator[Path]:
    """A fresh temporary name beside ``path`` (its folder made, stale temporaries of dead
    processes removed there); on any error in the block the temporary (file or folder) is
    removed, and an OSError is re-raised naming ``path`` instead of the temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
    except OSError as error:
        _remove(tmp)
        raise _naming(error, tmp, path) from error
    except BaseException:
        _remove(tmp)
        raise


def _naming(error: OSError, tmp: Path, path: Path) -> OSError:
    """``error`` naming the destination ``path`` (or the file in it) where it named the
    temporary or nothing (a failed write, e.g. on a full disk, names no file)."""
    name = None if error.filename is None else str(error.filename)
    if name is None or name == str(tmp):
        name = str(path)
    elif name.startswith(f"{tmp}{os.sep}"):  # a file inside a temporary folder
        name = str(path / os.path.relpath(name, tmp))
    else:
        return error
    return type(error)(error.errno, error.strerror or str(error), name)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator:
    """``open(path, mode)`` that replaces ``path`` atomically (see :func:`atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files (mode 'w' or 'wb'), not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to ``path`` atomically, so readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without error it
    replaces ``path`` (see :func:`replace_folder`), on error it is removed."""
    path = Path(path)
    with _temporary(path) as tmp:
        tmp.mkdir(0o700)
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        replace_folder(tmp, path)


def replace_folder(tmp: Path, path: Path) -> Path:
    """Move the finished folder ``tmp`` to ``path``, replacing any old one by renames only
    (the old one is moved aside first and removed last)."""
    old = None
    if path.exists():
        old = temp_path(path, ".old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the old folder back
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync(path.parent)
    return path


@contextlib.contextmanager
def locked_folder(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on output folder ``folder`` (created if needed) for the block.

    A second process asking for the same folder fails at once with
    :class:`FolderInUseError` naming the folder and the holder's process id. The lock is an
    ``flock`` on ``FOLDER/.mlpot.lock``: the system releases it when its holder dies, so a
    killed run never blocks the next one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderInUseError(f"{folder}: another mlpot run (process {holder}) is writing "
                                   "into this folder; wait for it or choose another --out")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock
