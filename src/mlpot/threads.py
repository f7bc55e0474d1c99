"""How many CPU threads torch uses, and how its idle OpenMP workers wait.

Thread count, the first rule that applies:

1. an explicit count (``--threads``, ``training.threads``);
2. ``OMP_NUM_THREADS``, when the user set it;
3. the work: a model call on fewer than :data:`SMALL_WORK_ATOMS` atoms runs on one thread
   (its parallel regions are too short to repay the synchronisation, and on a busy machine
   every region waits for a worker the scheduler has put aside: 400 MD steps of acac took
   77 s on the default two threads beside other work, 13 s on one), a larger one on every
   core this process may use that other work leaves free (its cores minus the 1-minute load
   average, at least one): a parallel region waits for its slowest thread, so a thread
   sharing a core with other work slows the whole call (the acac descriptor cache: 2.3 s on
   two idle cores, 32 s on two threads beside one busy process, 3.5 s on one thread).

Waiting: torch's CPU build on Linux runs its parallel regions on GNU OpenMP (libgomp, shipped
in ``torch/lib``), which reads ``OMP_WAIT_POLICY`` once, when it is loaded by ``import torch``.
Its default lets idle workers spin; on a machine with other work they take cores from it and
from each other. ``PASSIVE`` makes them sleep (96 frames of acac's descriptor cache on two
threads beside other work: 24–29 s with the default policy, 8–10 s passive).
:func:`wait_passively` sets it unless the user did; ``import mlpot`` calls it, so ``mlpot``
and ``python -m mlpot`` get it before torch loads. A program that imports torch before mlpot
must export ``OMP_WAIT_POLICY=PASSIVE`` itself (libgomp has no call to change it later).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from mlpot.errors import ConfigError

SMALL_WORK_ATOMS = 500  # atoms per model call below which one thread is faster


def wait_passively() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy or torch (and so its
    OpenMP runtime) is already loaded, when setting it would change nothing."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores of :func:`usable_cores` that other work leaves free: minus the 1-minute load
    average (rounded), at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this system
        load = 0.0
    return max(usable_cores() - round(load), 1)


def user_threads() -> int | None:
    """The thread count of ``OMP_NUM_THREADS`` (its first entry), or None when unset or not
    a positive integer (libgomp ignores such values too)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def check_threads(threads, name: str = "--threads") -> int | None:
    """``threads`` if None or a positive integer, else a one-line ConfigError."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{name} must be a positive integer, not {threads!r}")
    return threads


def atoms_per_batch(frames, batch_size: int) -> float:
    """Mean atoms of one batch of ``batch_size`` of ``frames`` (judged on the first 256)."""
    sizes = [len(frame) for frame in frames[:256]]
    return batch_size * sum(sizes) / len(sizes) if sizes else 0.0


def choose_threads(atoms_per_call: float, explicit: int | None = None) -> int:
    """Threads for model calls on about ``atoms_per_call`` atoms (see the module's rules)."""
    if check_threads(explicit) is not None:
        return explicit
    from_env = user_threads()
    if from_env is not None:
        return from_env
    return 1 if atoms_per_call < SMALL_WORK_ATOMS else free_cores()


def use_threads(atoms_per_call: float, explicit: int | None = None) -> int:
    """Set torch's thread count by :func:`choose_threads`; returns it."""
    import torch

    threads = choose_threads(atoms_per_call, explicit)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def threads_for(atoms_per_call: float, explicit: int | None = None):
    """Run a block on :func:`choose_threads` threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(choose_threads(atoms_per_call, explicit))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
