"""MD and training speed on an idle machine and with one core busy, before and after a change.

Each code version (``--before SRC``, default /work/main/src; ``--after SRC``, default this
checkout's src) runs, with its default thread count and wait policy (OMP_NUM_THREADS and
OMP_WAIT_POLICY removed from the environment):

* ``mlpot md`` of acac (15 atoms), ``--steps`` steps of NVE from test_MD_300K frame 0 with a
  bpnn trained here first: steps/s (of run_md, so without reading the model);
* ``mlpot train`` of bpnn and of a small equivariant model on ``--frames`` acac frames for
  ``--epochs`` epochs (no time budget): epochs per training minute (the trainer's clock,
  descriptor caching included) and the command's wall seconds;

once on the idle machine and once beside a busy loop (one Python process spinning; ``--pin``
pins it to core 0). The slowdown is busy/idle time; the target is ≤ 1.5 with one of two
cores busy. Every run is a fresh process (the OpenMP runtime reads its settings at start).

    .venv/bin/python benchmarks/busy_machine.py --before OLD/src   # ~6–10 min on 2 cores
    .venv/bin/python benchmarks/busy_machine.py --before OLD/src --label idle_rerun --pin

Writes benchmarks/results/busy_machine/<label>.json (every run and the ratios) and prints a
table. The machine should have no other work: the idle runs are the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
from common import ACAC, OUT, ROOT, write_json

RESULTS = common.RESULTS / "busy_machine"
LINES = 17  # lines per acac frame in the extxyz files
MD_MODEL_EPOCHS = 40  # enough for 400 steps of NVE at 300 K without leaving the data

# run inside a fresh interpreter with one code version on PYTHONPATH: time the command only
# (and run_md alone: the MD's steps without reading the model)
DRIVER = """
import json, os, sys, time
began = time.perf_counter()
from mlpot.cli import main
import mlpot.dynamics.md as md
imported = time.perf_counter()
timing = {}
run_md = md.run_md
def timed_md(*args, **kwargs):
    start = time.perf_counter()
    summary = run_md(*args, **kwargs)
    timing["md_s"] = time.perf_counter() - start
    return summary
md.run_md = timed_md
code = main(sys.argv[1:])
import torch
print("BENCH " + json.dumps({"rc": code, "import_s": imported - began,
                             "run_s": time.perf_counter() - imported, **timing,
                             "threads": torch.get_num_threads(),
                             "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def clean_env(src: Path) -> dict:
    """The environment of a run: this code version first, no thread or wait settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(src)}


def mlpot(src: Path, *args, cwd: Path) -> dict:
    """Run ``mlpot ARGS`` under the driver; its timing record."""
    result = subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], cwd=cwd,
                            env=clean_env(src), capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"mlpot {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def head(source: Path, target: Path, n_frames: int) -> Path:
    with open(source) as handle:
        target.write_text("".join(next(handle) for _ in range(n_frames * LINES)))
    return target


def train_config(folder: Path, train: Path, kind: str, epochs: int, frames: int) -> Path:
    model = {"kind": kind, "cutoff": 5.0}
    if kind == "equivariant":
        model["size"] = "small"
    config = {"data": {"train": str(train), "valid_fraction": 0.1, "max_train": frames},
              "model": model,
              "training": {"max_epochs": epochs, "max_minutes": None, "lr_schedule": "plateau"},
              "seed": 0, "out": str(folder / f"run_{kind}")}
    path = folder / f"{kind}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    return path


def start_busy_loop(pin: bool) -> subprocess.Popen:
    """One process spinning on one core (pinned to core 0 with ``pin``)."""
    pre = (lambda: os.sched_setaffinity(0, {0})) if pin else None
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pre)


def measure(src: Path, work: Path, model: Path, args) -> dict:
    """MD and the two trainings with one code version."""
    out = {}
    md = mlpot(src, "md", model, ACAC / "test_MD_300K.xyz", "--steps", args.steps,
               "--min-distance", 0, "--interval", 100, "--out", work / "md.traj", cwd=work)
    summary = json.loads((work / "md.json").read_text())
    done = summary["stopped"]["step"] if summary["stopped"] else args.steps  # exit 3: unstable
    out["md"] = {**md, "steps_done": done, "mean_temperature_K": summary["mean_temperature_K"],
                 "steps_per_s": done / md["md_s"]}
    for kind in ("bpnn", "equivariant"):
        config = train_config(work, work / "train.xyz", kind, args.epochs, args.frames)
        record = mlpot(src, "train", config, cwd=work)
        summary = json.loads((work / f"run_{kind}" / "metrics.json").read_text())
        out[kind] = {**record, "epochs": summary["epochs"], "train_minutes": summary["minutes"],
                     "setup_minutes": summary.get("setup_minutes"),
                     "epochs_per_min": summary["epochs"] / summary["minutes"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True,
                        help="src folder of the code before the change (e.g. a worktree of main)")
    parser.add_argument("--after", type=Path, default=ROOT / "src")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=48, help="training frames")
    parser.add_argument("--pin", action="store_true", help="pin the busy loop to core 0")
    parser.add_argument("--label", default="indicative")
    parser.add_argument("--work", type=Path, default=OUT / "busy")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    began, load_at_start = time.time(), os.getloadavg()

    head(ACAC / "train_300K.xyz", args.work / "train.xyz", args.frames + args.frames // 8 + 2)
    print(f"training the MD model (bpnn, {MD_MODEL_EPOCHS} epochs)", flush=True)
    mlpot(args.after, "train", train_config(args.work, args.work / "train.xyz", "bpnn",
                                             MD_MODEL_EPOCHS, args.frames), "--threads", 1,
          cwd=args.work)
    model = args.work / "md_model"
    shutil.rmtree(model, ignore_errors=True)
    os.replace(args.work / "run_bpnn" / "model", model)

    runs = {}
    for condition in ("idle", "busy"):
        busy = start_busy_loop(args.pin) if condition == "busy" else None
        try:
            for version in ("before", "after"):
                print(f"{condition}, {version}", flush=True)
                runs[f"{version}/{condition}"] = measure(getattr(args, version), args.work,
                                                         model, args)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()

    def slowdown(version: str, task: str) -> float:
        key = "steps_per_s" if task == "md" else "epochs_per_min"
        return runs[f"{version}/idle"][task][key] / runs[f"{version}/busy"][task][key]

    ratios = {version: {task: slowdown(version, task) for task in ("md", "bpnn", "equivariant")}
              for version in ("before", "after")}
    result = {"label": args.label, "cores": len(os.sched_getaffinity(0)), "pin": args.pin,
              "steps": args.steps, "epochs": args.epochs, "frames": args.frames,
              "before": str(args.before), "after": str(args.after),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.time() - began,
              "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
              "runs": runs,
              "slowdown_busy_over_idle": ratios}
    write_json(RESULTS / f"{args.label}.json", result)

    print(f"\n{'':22}{'idle':>12}{'busy':>12}{'slowdown':>10}   threads (idle/busy)")
    for version in ("before", "after"):
        for task, key, unit in (("md", "steps_per_s", "steps/s"),
                                ("bpnn", "epochs_per_min", "epochs/min"),
                                ("equivariant", "epochs_per_min", "epochs/min")):
            idle, busy = runs[f"{version}/idle"][task], runs[f"{version}/busy"][task]
            print(f"{version:>7} {task:<13} {idle[key]:>8.1f}    {busy[key]:>8.1f}    "
                  f"{ratios[version][task]:>6.2f}×   {idle['threads']}/{busy['threads']}  "
                  f"({unit})")
    print(f"\n{RESULTS / (args.label + '.json')}  ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
