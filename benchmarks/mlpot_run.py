#!/usr/bin/env python
"""mlpot under the peers' benchmark protocol: same command line, same measurements, same
results.json as benchmarks/peers/mace_run.py and nequip_run.py (all from peers/peer_common.py).

    .venv/bin/python benchmarks/mlpot_run.py --kind equivariant --size medium \
        --train examples/acac/train_300K.xyz --isolated examples/acac/isolated_atoms.xyz \
        --tests examples/acac/test_MD_300K.xyz --minutes 20 --snapshots 10 --threads 1 \
        --out benchmarks/out/compare/acac_equivariant [--set training.learning_rate=0.01]

``mlpot train`` runs as a subprocess (its own process group, peak RSS sampled each second) with
``training.max_minutes`` = --minutes and ``snapshot_minutes`` = the marks; mlpot's clock counts
training (and bpnn's descriptor cache), not reading the data (a few seconds), and mlpot stops by
itself. Each snapshot (best on validation so far, what a run stopped then would return) is
scored with mlpot's ASE calculator (float64) by peer_common.evaluate; the final model is timed
in a fresh subprocess, in float32 (the peers' precision) and float64.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from peers import peer_common as pc

log = pc.Logger("mlpot_run")


def make_calculator(path: str, dtype: str | None = None):
    """mlpot's ASE calculator on a model folder, or on an exported program (``.pt2``, in the
    dtype it was exported in)."""
    import mlpot

    if path.endswith(".pt2"):
        from mlpot.export import ExportedCalculator

        return ExportedCalculator(path)
    return mlpot.Calculator(path, dtype=dtype or os.environ.get("MLPOT_TIMING_DTYPE", "float64"))


def parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def main() -> None:
    parser = pc.make_parser(__doc__)
    parser.add_argument("--kind", default="bpnn", help="mlpot model kind")
    parser.add_argument("--size", default="medium", help="model size preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. training.learning_rate=0.01 (repeatable)")
    args = parser.parse_args()
    if args._time_model:
        pc.timing_child(args, make_calculator)
        return
    marks = pc.check_args(parser, args)
    pc.set_threads(args.threads)
    import torch
    import yaml

    import mlpot

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = pc.prepare_data(args, str(out / "data"), log, None, None)
    config = {"data": {"train": str(Path(args.train).resolve()),
                       "isolated_atoms": str(Path(args.isolated).resolve())},
              "model": {"kind": args.kind, "size": args.size},
              "training": {"max_minutes": args.minutes, "threads": args.threads,
                           "snapshot_minutes": [m for m in marks if m < args.minutes],
                           "patience": 100000},
              "seed": args.seed, "out": str(out / "train")}
    for item in args.set:
        key, value = item.split("=", 1)
        node = config
        *parents, last = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = parse_value(value)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "mlpot", "train", str(config_path)]
    if not args.eval_only:
        trained = pc.run_budgeted(command, pc.thread_env(args.threads), str(out / "train.log"),
                                  args.minutes * 60 + 300, [], lambda key, m: {}, log=log,
                                  name="mlpot train")
        pc.write_json(str(out / "train_info.json"), trained)
    trained = json.loads((out / "train_info.json").read_text())

    models = {pc.fmt_min(m): out / "train" / "snapshots" / f"model_{pc.fmt_min(m)}min"
              for m in marks if m < args.minutes}
    models[pc.fmt_min(args.minutes)] = out / "train" / "model"
    results = {}
    for key, path in models.items():
        if not path.exists():
            results[key] = None
            continue
        calculator = make_calculator(str(path), "float64")
        results[key] = {stem: pc.evaluate(calculator, frames)
                        for stem, frames in data["tests"].items()}
        for stem, r in results[key].items():
            log(f"{key} min {stem}: {pc.metrics_line(r)}")
    timing = {}
    for dtype in ("float32", "float64"):
        timing[dtype] = pc.measure_inference(
            os.path.abspath(__file__), str(models[pc.fmt_min(args.minutes)]),
            data["timing_path"], args.threads, args.timing_calls,
            str(out / f"timing_{dtype}.log"), {"MLPOT_TIMING_DTYPE": dtype})
        log(f"calculator {dtype}: {timing[dtype]['ms_per_call']:.2f} ms per call, "
            f"peak RSS {timing[dtype]['peak_rss_mb_infer']} MB")
    rows = (out / "train" / "log.csv").read_text().splitlines()
    run_info = json.loads((out / "train" / "run.json").read_text())
    res = {
        "peer": f"mlpot {args.kind} ({args.size})",
        "mlpot_version": mlpot.__version__, "torch_version": torch.__version__,
        "date": pc.now_iso(), "machine": pc.machine_info(), "threads": args.threads,
        "budget_minutes": args.minutes, "config": run_info.get("config"),
        "epochs_done": len(rows) - 1,
        "s_per_epoch": round(args.minutes * 60 / max(len(rows) - 1, 1), 2),
        "snapshots": results,
        "ms_per_call": timing["float32"]["ms_per_call"],
        "ms_per_call_float64": timing["float64"]["ms_per_call"],
        "ms_per_call_note": "mlpot.Calculator energy+forces in a fresh subprocess, float32 "
                            "(ms_per_call) and float64, same protocol as the peers",
        "peak_rss_mb_train": trained.get("peak_rss_mb_train"),
        "peak_rss_mb_infer": timing["float32"]["peak_rss_mb_infer"],
        "train_wall_s": trained.get("train_wall_s"),
        "metric_units": dict(pc.METRIC_UNITS),
        "data": data["info"], "command": " ".join(command),
    }
    pc.write_results(str(out), res, log)


if __name__ == "__main__":
    main()
