"""Scores the bpnn-only baseline of RESULTS' "Mixed-kind ensemble with 15-minute members":
three 15-minute bpnn members (seeds 0, 1, 2) trained into /tmp/het15 with the configs here."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
from uncertainty_acac import DATA, TESTS  # noqa: E402
from uncertainty_hetero import row, score  # noqa: E402

from mlpot.data.records import read_frames  # noqa: E402
from mlpot.uncertainty.ensemble import Ensemble, load_model  # noqa: E402

torch.set_num_threads(1)
members = [load_model(f"/tmp/het15/{run}/model") for run in ("bpnn", "bpnn_seed1", "bpnn_seed2")]
frames = {test: read_frames(DATA / f"{test}.xyz") for test in TESTS}
result = score(Ensemble(members).eval(), frames)
print(row("bpnn ×3 (seeds 0, 1, 2; own validation splits)", result))
json.dump(result, open("/tmp/het15/results_bpnn3.json", "w"), indent=1)
