#!/usr/bin/env python
"""mlpot's models against MACE and NequIP at equal CPU time, in one run.

    .venv/bin/python benchmarks/model_compare.py --data acac:15,ethanol:10 --workers 2 \
        [--models bpnn,schnet,equivariant,mace,nequip] [--out benchmarks/out/compare]

``--data NAME:MINUTES,…``: every model of a data set trains for its minutes; all jobs of all
data sets share one queue.

Every model trains for the same wall-clock minutes on one thread (``--threads``), ``--workers``
at a time (2 on this 2-core machine, so each has a core of its own; the queue is ordered so
peers and mlpot models share the machine alike). Each runs through its runner with the same
protocol (benchmarks/peers/peer_common.py): mlpot via benchmarks/mlpot_run.py, MACE via
peers/mace_run.py (venv .peers/mace), NequIP via peers/nequip_run.py (venv .peers/nequip).
Writes OUT/<model>/results.json per model, OUT/summary.json and prints a Markdown table:
test errors of the final model, epochs, ms per energy+forces call (float32, 1 thread), peak
resident memory in training and inference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ACAC, OUT, ROOT, SHARED_DATA as SHARED, write_json

DATASETS = {
    "acac": {"train": ACAC / "train_300K.xyz",
             "isolated": ACAC / "isolated_atoms.xyz",
             "tests": [ACAC / f"{name}.xyz"
                       for name in ("test_MD_300K", "test_MD_600K", "test_H_transfer")]},
    "ethanol": {"train": SHARED / "ethanol/train.xyz",
                "isolated": SHARED / "ethanol/isolated_atoms.xyz",
                "tests": [SHARED / "ethanol/test_MD.xyz", SHARED / "ethanol/test_H_removal.xyz"]},
}
MLPOT_KINDS = ("bpnn", "schnet", "painn", "equivariant")
PEERS = {"mace": (".peers/mace/bin/python", "benchmarks/peers/mace_run.py"),
         "nequip": (".peers/nequip/bin/python", "benchmarks/peers/nequip_run.py")}


def command(model: str, data: dict, minutes: float, args, out: Path) -> list[str]:
    common = ["--train", str(data["train"]), "--isolated", str(data["isolated"]),
              "--tests", *map(str, data["tests"]), "--minutes", str(minutes),
              "--snapshots", args.snapshots, "--threads", str(args.threads),
              "--out", str(out)]
    if model in PEERS:
        python, script = PEERS[model]
        return [str(ROOT / python), str(ROOT / script), *common]
    kind, _, size = model.partition(":")
    extra = [item for item in args.set if item.startswith(f"{kind}:")]
    sets = [f"--set={item.split(':', 1)[1]}" for item in extra]
    return [sys.executable, str(ROOT / "benchmarks/mlpot_run.py"), "--kind", kind,
            "--size", size or "medium", *sets, *common]


def run_one(name: str, model: str, minutes: float, args, out: Path) -> dict:
    folder = out / name / model.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] start {name} {model}", flush=True)
    with open(folder / "runner.log", "w") as handle:
        code = subprocess.run(command(model, DATASETS[name], minutes, args, folder),
                              stdout=handle, stderr=subprocess.STDOUT).returncode
    print(f"[{time.strftime('%H:%M:%S')}] {name} {model} finished (rc {code}, "
          f"{(time.time() - started) / 60:.1f} min)", flush=True)
    path = folder / "results.json"
    return json.loads(path.read_text()) if code == 0 and path.exists() else {"failed": code}


def table(results: dict, tests: list[str], minutes: float) -> str:
    key = f"{minutes:g}"
    head = ("| model | epochs | " + " | ".join(f"{t} E / F RMSE" for t in tests)
            + " | ms/call (f32) | peak MB train / infer |")
    lines = [head, "|---" * (len(tests) + 4) + "|"]
    for model, res in results.items():
        if "failed" in res:
            lines.append(f"| {model} | failed (rc {res['failed']}) |")
            continue
        snapshot = (res.get("snapshots") or {}).get(key) or {}
        cells = []
        for t in tests:
            r = snapshot.get(t)
            if not r:
                cells.append("–")
                continue
            force = r.get("force_rmse_meV_A")
            cells.append(f"{r['energy_rmse_meV_atom']:.2f} / "
                         + (f"{force:.1f}" if force is not None else "–"))
        lines.append(f"| {model} | {res.get('epochs_done')} | " + " | ".join(cells)
                     + f" | {res.get('ms_per_call') or float('nan'):.1f} | "
                     f"{res.get('peak_rss_mb_train')} / {res.get('peak_rss_mb_infer')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="acac:15,ethanol:10",
                        help=f"NAME:MINUTES,… with NAME in {sorted(DATASETS)}")
    parser.add_argument("--snapshots", default="", help="extra marks, comma list of minutes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", default="bpnn,schnet,equivariant,mace,nequip",
                        help="mlpot kinds (KIND or KIND:SIZE) and peers (mace, nequip)")
    parser.add_argument("--set", action="append", default=[], metavar="KIND:KEY=VALUE",
                        help="config override for one mlpot kind, e.g. "
                             "equivariant:training.learning_rate=0.01")
    parser.add_argument("--out")
    args = parser.parse_args()
    budgets = {name: float(minutes) for name, minutes in
               (item.split(":") for item in args.data.split(","))}
    if set(budgets) - set(DATASETS):
        parser.error(f"unknown data set in {args.data!r}")
    out = Path(args.out or OUT / "compare").resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    for model in models:
        if model not in PEERS and model.partition(":")[0] not in MLPOT_KINDS:
            parser.error(f"unknown model {model!r}")
    jobs = [(name, model) for name in budgets for model in models]
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(run_one, *job, budgets[job[0]], args, out) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    for name, minutes in budgets.items():
        per_model = {model: results[(name, model)] for model in models}
        summary = {"data": name, "minutes": minutes, "threads": args.threads,
                   "workers": args.workers, "date": time.ctime(), "results": per_model}
        write_json(out / name / "summary.json", summary, default=str)
        print(f"\n{name}, {minutes:g} min each:")
        print(table(per_model, [Path(t).stem for t in DATASETS[name]["tests"]], minutes))


if __name__ == "__main__":
    main()
