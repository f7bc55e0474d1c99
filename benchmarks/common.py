"""What the benchmark scripts share: where things are, and how a result is written.

Scripts in this folder run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they ``import common`` (and sibling scripts, e.g. ``from long_range_cost
import water_box``; the peer runners' shared module as ``from peers import peer_common``).
Scripts in ``paper/`` import it by the same name through ``paper/common.py``, which loads
this file. The peer runners (``peers/``, run by the peers' own interpreters, without mlpot)
share ``peers/peer_common.py`` instead.

Standard library only: importing this costs nothing (``--help`` stays fast) and needs no
mlpot. Error metrics come from :mod:`mlpot.train.metrics` (energies meV/atom, forces meV/Å).
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
ACAC = ROOT / "examples" / "acac"  # acac: train_300K, test_MD_300K/600K, test_H_transfer, E0s
SHARED_DATA = ROOT.parent / "shared" / "data"  # the data sets beside the checkout (acac, rmd17, …)
OUT = ROOT / "benchmarks" / "out"  # scratch outputs (git-ignored)
RESULTS = ROOT / "benchmarks" / "results"  # committed results: data only, no machine paths


def write_json(path: Path | str, data, newline: bool = False, default=None) -> Path:
    """Write ``data`` to ``path`` as JSON (indent 1; a final newline with ``newline``;
    ``default`` as for :func:`json.dumps`), its folder made if missing; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=default) + ("\n" if newline else ""))
    return path
