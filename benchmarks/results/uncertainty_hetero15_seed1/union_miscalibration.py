"""Miscalibration area of the recalibrated four-kind ensembles of both draws
(/tmp/het15/ens4, /tmp/het15s1/ens4) on each acac test set and on their union:

    .venv/bin/python benchmarks/results/uncertainty_hetero15_seed1/union_miscalibration.py \
        /tmp/het15/ens4 /tmp/het15s1/ens4
"""
import sys

import numpy as np
import torch
from mlpot.data.records import read_frames
from mlpot.train.metrics import predict
from mlpot.uncertainty.calibration import ensemble_errors, miscalibration_area
from mlpot.uncertainty.ensemble import load_model
torch.set_num_threads(2)
D = '/work/main/examples/acac/'
sets = {t: read_frames(D + t + '.xyz') for t in ('test_MD_300K', 'test_MD_600K', 'test_H_transfer')}
for path in sys.argv[1:]:
    model = load_model(path).eval()
    parts = {t: ensemble_errors(f, predict(model, f)) for t, f in sets.items()}
    out = []
    for kind in ('energy', 'forces'):
        have = [p[kind] for p in parts.values() if kind in p]
        e = np.concatenate([h[0].ravel() for h in have]); s = np.concatenate([h[1].ravel() for h in have])
        each = ' '.join(f"{t[5:]} {miscalibration_area(p[kind][0].ravel(), p[kind][1].ravel()):.3f}" for t, p in parts.items() if kind in p)
        out.append(f"{kind}: union {miscalibration_area(e, s):.3f} ({each})")
    print(path, '; '.join(out), flush=True)
