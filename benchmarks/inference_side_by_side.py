#!/usr/bin/env python
"""Inference side by side, one run: mlpot bpnn (eager, exported, AOTInductor) against NequIP
(its AOTInductor-compiled model) and MACE, all trained on the same acac data for 15 minutes,
and TorchANI's ANI-2x architecture (untrained: its weights cannot be downloaded here; speed
only, benchmarks/peers/torchani_time.py).

    .venv/bin/python benchmarks/inference_side_by_side.py \
        [--runs benchmarks/out/compare/acac] [--out benchmarks/out/side_by_side]

Takes the models of the equal-CPU-time comparison (benchmarks/model_compare.py, RESULTS.md
"Message passing against MACE and NequIP"): ``RUNS/bpnn/train/model``,
``RUNS/nequip/snapshots/snap_15min.nequip.pt2`` (compiled by nequip-compile --mode aotinductor)
and ``RUNS/mace/snapshots/snap_15min.model``. mlpot's model is exported here (`mlpot export
--dtype float32`, with and without `--aoti`). Every model is timed through its own ASE
calculator, in a fresh process with one thread (peers in their own venvs, `.peers/`), one after
another: mean ms per energy+forces call over 50 calls after 10 warm-up, positions jittered by
1e-3 Å (peer_common.time_calculator), on one acac molecule (test_MD_300K frame 0, 15 atoms)
and on 27 randomly rotated acac molecules in a periodic cube (405 atoms, 24 Å). float32 for
all. Prints a Markdown table, writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from common import ACAC, OUT, ROOT, write_json
from peers import peer_common as pc


def acac_box(n_side: int = 3, spacing: float = 8.0, seed: int = 0) -> Atoms:
    """n_side³ acac molecules (test_MD_300K frame 0), randomly rotated, on a cubic lattice of
    ``spacing`` Å in a periodic box."""
    rng = np.random.default_rng(seed)
    molecule = read(ACAC / "test_MD_300K.xyz", index=0)
    molecule.calc = None
    box = Atoms(cell=np.eye(3) * spacing * n_side, pbc=True)
    for index in np.ndindex(n_side, n_side, n_side):
        copy = molecule.copy()
        copy.positions -= copy.positions.mean(0)
        copy.rotate(rng.uniform(0, 360), rng.normal(size=3))
        copy.translate((np.array(index) + 0.5) * spacing)
        box += copy
    return box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(OUT / "compare" / "acac"))
    parser.add_argument("--out", default=str(OUT / "side_by_side"))
    parser.add_argument("--bpnn", help="mlpot model folder to use instead of RUNS/bpnn/train/model "
                                       "(e.g. one retrained under the same protocol)")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = str(ROOT / ".venv/bin/python")
    bpnn = args.bpnn or str(runs / "bpnn/train/model")
    compile_seconds = {}
    for name, extra in [("bpnn_exported.pt2", []), ("bpnn_aoti.pt2", ["--aoti"])]:
        started = time.perf_counter()
        subprocess.run([python, "-m", "mlpot", "export", bpnn, str(out / name), "--dtype",
                        "float32", *extra], check=True, env=pc.thread_env(1), cwd=ROOT)
        compile_seconds[name] = time.perf_counter() - started
    systems = {"acac (15 atoms)": out / "acac.xyz", "27 acac, periodic (405 atoms)":
               out / "acac_box.xyz"}
    molecule = read(ACAC / "test_MD_300K.xyz", index=0)
    molecule.calc = None
    write(systems["acac (15 atoms)"], molecule)
    write(systems["27 acac, periodic (405 atoms)"], acac_box())
    mlpot_script = str(ROOT / "benchmarks/mlpot_run.py")
    models = [
        ("mlpot bpnn, eager", python, mlpot_script, bpnn, {"MLPOT_TIMING_DTYPE": "float32"}),
        ("mlpot bpnn, exported program", python, mlpot_script, str(out / "bpnn_exported.pt2"),
         None),
        ("mlpot bpnn, AOTInductor", python, mlpot_script, str(out / "bpnn_aoti.pt2"), None),
        ("NequIP, AOTInductor (nequip-compile)", str(ROOT / ".peers/nequip/bin/python"),
         str(ROOT / "benchmarks/peers/nequip_run.py"),
         str(runs / "nequip/snapshots/snap_15min.nequip.pt2"), None),
        ("MACE", str(ROOT / ".peers/mace/bin/python"), str(ROOT / "benchmarks/peers/mace_run.py"),
         str(runs / "mace/snapshots/snap_15min.model"), None),
        ("TorchANI, ANI-2x architecture (untrained: speed only)",
         str(ROOT / ".peers/torchani/bin/python"), str(ROOT / "benchmarks/peers/torchani_time.py"),
         "ani2x", {"TORCHANI_NO_WARN_EXTENSIONS": "1"}),
    ]
    results = {"date": time.ctime(), "machine": pc.machine_info(), "bpnn_model": bpnn,
               "export_seconds": compile_seconds, "timings": []}
    for system, atoms in systems.items():
        for name, interpreter, script, model, env in models:
            timing = pc.measure_inference(script, model, str(atoms), 1, 50,
                                          str(out / "timing.log"), env, python=interpreter)
            row = {"model": name, "system": system, **timing}
            results["timings"].append(row)
            print(json.dumps(row), flush=True)
    write_json(out / "results.json", results)
    print("\n| model | " + " | ".join(systems) + " |")
    print("|---" * (1 + len(systems)) + "|")
    for name, *_ in models:
        cells = []
        for system in systems:
            row = next(r for r in results["timings"]
                       if r["model"] == name and r["system"] == system)
            per_atom = 1000 * row["ms_per_call"] / row["n_atoms"]
            cells.append(f"{row['ms_per_call']:.2f} ms ({per_atom:.0f} µs/atom)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nexport / compile seconds: {compile_seconds}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
