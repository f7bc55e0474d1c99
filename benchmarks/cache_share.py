"""Share of the shipped example's budget (examples/acac.yaml: bpnn, 3 minutes) that the
descriptor cache takes, before and after a change, each in a fresh process with its default
threads and wait policy; ``--busy`` adds one spinning process (one core busy).

    .venv/bin/python benchmarks/cache_share.py --before OLD/src [--busy] [--label NAME]

Writes benchmarks/results/busy_machine/cache_share_<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
from common import OUT, ROOT, write_json

RESULTS = common.RESULTS / "busy_machine"

# what run_training does up to the Trainer, which builds the cache (setup_seconds)
DRIVER = """
import json, sys, time, torch
import mlpot
from mlpot.config import load_config
from mlpot.data.dataset import elements_of, reference_energies
from mlpot.train.run import build_potential, fit_statistics, load_data
from mlpot.train.trainer import Trainer
config = load_config(sys.argv[1], {"out": sys.argv[2]})
data = load_data(config)
train, valid = data["train"], data["valid"]
elements = elements_of(train, valid, data["isolated"])
e0, _ = reference_energies(train, elements, data["isolated"])
try:  # the thread policy, where this version has one
    from mlpot.threads import atoms_per_batch, use_threads
    use_threads(atoms_per_batch(train, config.training.batch_size), config.training.threads)
except ImportError:
    pass
potential = build_potential(config, elements, e0)
fit_statistics(potential, train)
trainer = Trainer(potential.float(), train, valid, config.training, config.out, progress=False)
print("BENCH " + json.dumps({"setup_s": trainer.setup_seconds, "frames": len(train),
                             "threads_after": torch.get_num_threads(),
                             "budget_s": 60 * config.training.max_minutes}))
"""


def run(src: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "examples" / "acac.yaml"),
                             str(out)], env={**env, "PYTHONPATH": str(src)},
                            capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise RuntimeError(result.stderr[-3000:])
    record = json.loads(lines[-1][6:])
    return {**record, "share_of_budget": record["setup_s"] / record["budget_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True,
                        help="src folder of the code before the change (e.g. a worktree of main)")
    parser.add_argument("--after", type=Path, default=ROOT / "src")
    parser.add_argument("--busy", action="store_true", help="one spinning process beside")
    parser.add_argument("--label", default="indicative")
    args = parser.parse_args()
    out = OUT / "cache_share"
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy
            else None)
    if busy is not None:  # other work that has been running a while (the 1-minute load average
        time.sleep(60)    # the thread policy reads has caught up with it)
    try:
        runs = {version: run(getattr(args, version), out) for version in ("before", "after")}
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    result = {"label": args.label, "busy": args.busy, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_average_at_end": os.getloadavg(), "runs": runs}
    path = write_json(RESULTS / f"cache_share_{args.label}.json", result)
    for version, record in runs.items():
        print(f"{version:>7}: descriptor cache {record['setup_s']:.1f} s for "
              f"{record['frames']} frames = {record['share_of_budget']:.0%} of the "
              f"{record['budget_s'] / 60:g}-minute budget")
    print(path)


if __name__ == "__main__":
    main()
