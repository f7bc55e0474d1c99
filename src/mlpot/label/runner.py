"""Label many structures on Dask workers, storing each result the moment it arrives.

By default a ``dask.distributed.LocalCluster`` of single-threaded worker processes runs on
this machine (one process per label: the CPU seconds recorded are the label's own); with
``scheduler="tcp://host:8786"`` the labels run on an existing cluster instead. Only this
process writes the database (SQLite has one writer), one row per finished label, so a killed
run loses at most the labels in flight, and the same command restarted labels only what is
missing (failed labels, including those whose worker died, are kept as failed with their
message, retried only with ``retry_failed``).
"""

from __future__ import annotations

import time
from pathlib import Path

from ase import Atoms

from mlpot.label.engines import Label
from mlpot.label.store import LabelStore, structure_key
from mlpot.progress import bar as tqdm


def pending(keys: list[str], store: LabelStore, level: str,
            retry_failed: bool = False) -> list[int]:
    """Indices of the structure ``keys`` without a stored label at ``level`` (the first of
    duplicates)."""
    done = store.done(level, failed_too=not retry_failed)
    seen, todo = set(), []
    for index, key in enumerate(keys):
        if key not in done and key not in seen:
            todo.append(index)
        seen.add(key)
    return todo


def _label(engine, atoms: Atoms):
    """The task a worker runs (module level, so that it pickles by reference)."""
    return engine.label(atoms)


def label_structures(structures: list[Atoms], engine, db: str | Path, *,
                     scheduler: str | None = None, workers: int | None = None,
                     sources: list[str] | None = None, retry_failed: bool = False,
                     progress: bool = True) -> dict:
    """Label every structure not yet in ``db`` with ``engine``; returns counts and seconds.

    Args:
        structures: the inputs (``info["charge"]``, ``info["spin"]`` respected).
        engine: an engine from :mod:`mlpot.label.engines`.
        db: ASE database path (created if missing).
        scheduler: address of a running Dask scheduler; None starts a LocalCluster.
        workers: worker processes of the LocalCluster (default: CPU count).
        sources: a name per structure recorded with its label (default "index k").
    """
    from dask.distributed import Client, LocalCluster, as_completed

    store = LabelStore(db)
    level = engine.level
    keys = [structure_key(atoms) for atoms in structures]
    todo = pending(keys, store, level, retry_failed)
    sources = sources or [f"index {k}" for k in range(len(structures))]
    summary = {"level": level, "requested": len(structures), "submitted": len(todo),
               "written": 0, "failed": 0, "wall_seconds": 0.0}
    if not todo:
        return summary
    if retry_failed:  # failed rows of what is retried make way for the new result
        retried = {keys[k] for k in todo}
        for row in store.rows(level=level, failed=True):
            if row.structure_key in retried:
                store.db.delete([row.id])
    started = time.perf_counter()
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = {client.submit(_label, engine, structures[k], pure=False): k for k in todo}
        bar = tqdm(total=len(todo), desc=f"labelling {level}", unit="structure",
                   disable=not progress)
        for future in as_completed(futures):
            k = futures[future]
            try:
                result = future.result()
            except Exception as error:  # the worker died (killed, out of memory, crashed)
                result = Label(energy=None, forces=None, converged=False, wall_seconds=0.0,
                               cpu_seconds=0.0, error=f"worker failed: {type(error).__name__}: "
                                                      f"{error}")
            if store.write(structures[k], keys[k], level,
                           engine.describe(), result, sources[k]):
                summary["written"] += 1
                summary["failed"] += int(result.failed)
            bar.update()
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    summary["wall_seconds"] = time.perf_counter() - started
    return summary
