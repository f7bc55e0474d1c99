import json, sys
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from uncertainty_acac import union_scores, TESTS, DATA
from uncertainty_hetero import row
from mlpot.data.records import read_frames
from mlpot.train.metrics import predict
from mlpot.uncertainty.ensemble import Ensemble, load_model
torch.set_num_threads(1)
members = [load_model(f"/tmp/het15/{r}/model") for r in ("bpnn", "bpnn_seed1", "bpnn_seed2")]
ens = Ensemble(members).eval()
frames = {t: read_frames(DATA / f"{t}.xyz") for t in TESTS}
scored = [(frames[t], predict(ens, frames[t])) for t in TESTS]
e, f = {}, {}
for (fr, p), t in zip(scored, TESTS):
    err = (np.asarray(p["energy"]) - [x.energy for x in fr]) / [len(x) for x in fr]
    e[t] = 1e3 * float(np.sqrt(np.mean(err**2)))
    if fr[0].forces is not None:
        f[t] = 1e3 * float(np.sqrt(np.mean(np.concatenate([np.asarray(a) - x.forces for a, x in zip(p["forces"], fr)])**2)))
res = {"spearman_union": union_scores(scored), "energy_rmse_meV_per_atom": e, "force_rmse_meV_per_A": f}
print(row("bpnn ×3 (seeds 0, 1, 2; own validation splits)", res))
json.dump(res, open("/tmp/het15/results_bpnn3.json", "w"), indent=1)
