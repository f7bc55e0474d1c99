#!/usr/bin/env python
"""Deep ensemble against the last-layer (LLPR) variant on acac: calibration and cost.

    .venv/bin/python benchmarks/uncertainty_compare.py \
        [--runs benchmarks/out/uncertainty_acac] [--heads 16]

Takes the two ensembles trained by benchmarks/uncertainty_acac.py (``clean`` and ``noisy``
labels; bpnn members with variance heads) and, for each, fits the last-layer uncertainty of
its first member on that run's own training split (same validation split), once with
sampled heads and once with local force σ. Scores all three on test_MD_300K, test_MD_600K
and test_H_transfer (σ means, Spearman, NLL, miscalibration area; Spearman per structure on
the union of the three sets, energies and force RMS, for the total and the epistemic σ,
next to the calibrated reference), then times one
energy+forces call (acac, float64, one thread) of: the single member, LLPR local, LLPR heads,
deep ensembles of 4 and 8 (stacked evaluation, and members in turn).
Writes OUT/compare.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import OUT, write_json
from uncertainty_acac import DATA, TESTS, fmt, union_scores  # same data, sets, scores


def score(model) -> dict:
    """Error and uncertainty metrics per test set, and union Spearman per structure."""
    from mlpot.data.records import read_frames
    from mlpot.train.metrics import evaluate
    from mlpot.uncertainty.calibration import uncertainty_metrics

    result, scored = {}, []
    for name in TESTS:
        frames = read_frames(DATA / f"{name}.xyz")
        metrics, predicted = evaluate(model, frames)
        metrics.update(uncertainty_metrics(frames, predicted))
        result[name] = metrics
        scored.append((frames, predicted))
    result["spearman_union"] = union_scores(scored)
    return result


def fit_and_score(run: str, heads: int) -> dict:
    """LLPR (heads and local) on the first member of ``run``; the ensemble re-scored."""
    import torch

    from mlpot.config import load_config
    from mlpot.serialize import load
    from mlpot.train.run import load_data
    from mlpot.uncertainty.ensemble import load_model
    from mlpot.uncertainty.last_layer import fit_last_layer

    torch.set_num_threads(1)
    run = Path(run)
    config = load_config(run.with_suffix(".yaml"))
    data = load_data(config)
    member = load(run / "members" / "member_0" / "model")
    result = {"ensemble": score(load_model(run / "model"))}
    for mode in ("heads", "local"):
        started = time.perf_counter()
        model, report = fit_last_layer(member, data["train"], data["valid"],
                                       config.training.sigma_energy,
                                       config.training.sigma_force, mode, heads, config.seed)
        report["fit_seconds"] = time.perf_counter() - started
        report.pop("prior_trials")
        result[f"llpr_{mode}"] = {"fit": report, **score(model)}
    return result


def cost(run: Path, heads: int) -> dict:
    """ms per energy+forces call through the ASE calculator (float64, one thread)."""
    import torch
    from ase.io import read

    from mlpot.config import load_config
    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.serialize import load
    from mlpot.train.run import load_data
    from mlpot.uncertainty.ensemble import Ensemble
    from mlpot.uncertainty.last_layer import fit_last_layer

    torch.set_num_threads(1)
    member = load(run / "members" / "member_0" / "model")
    data = load_data(load_config(run.with_suffix(".yaml")))
    few = data["train"][:40]  # the fit's cost is not timed here, only the calls
    llpr = {mode: fit_last_layer(member, few, data["valid"], 0.001, 0.03, mode, heads)[0]
            for mode in ("local", "heads")}
    members = [load(run / "members" / f"member_{k}" / "model") for k in range(4)]
    ensembles = {m: Ensemble([copy.deepcopy(members[k % 4]) for k in range(m)]) for m in (4, 8)}

    class InTurn(Ensemble):  # the members one after another, for comparison
        def forward(self, batch, forces=True, stress=False, create_graph=None):
            return self._members_in_turn(batch, forces, stress, False)

    candidates = {"single model": member, "LLPR local": llpr["local"],
                  f"LLPR heads (K={heads})": llpr["heads"]}
    for m, ensemble in ensembles.items():
        candidates[f"deep ensemble M={m} (stacked)"] = ensemble
        candidates[f"deep ensemble M={m} (in turn)"] = InTurn(list(ensemble.members))
    atoms = read(DATA / "test_MD_300K.xyz", index=0)
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    result = {}
    for name, model in candidates.items():
        calculator = MlpotCalculator(model)
        atoms.calc = calculator
        times = []
        for repeat in range(3):
            started = time.perf_counter()
            for _ in range(30):
                atoms.positions = base + rng.normal(0, 1e-3, base.shape)
                atoms.get_forces()
            times.append((time.perf_counter() - started) / 30 * 1000)
        result[name] = min(times)
    return result


def markdown(results: dict) -> str:
    lines = ["| labels | method | test set | F RMSE | F σ epi | F σ alea | Spearman E / F | "
             "NLL F | miscal. F |", "|---" * 9 + "|"]
    for labels in ("clean", "noisy"):
        for method in ("ensemble", "llpr_heads", "llpr_local"):
            r = results[labels][method]
            for test in TESTS:
                m = r[test]
                lines.append(
                    f"| {labels} | {method} | {test} | {fmt(m['force_rmse'], 1)} | "
                    f"{fmt(m['force_sigma_epistemic'], 1)} | "
                    f"{fmt(m['force_sigma_aleatoric'], 1)} | {fmt(m['spearman_energy'])} / "
                    f"{fmt(m['spearman_force'])} | {fmt(m['nll'])} | "
                    f"{fmt(m['miscalibration_area_force'], 3)} |")
            u = r["spearman_union"]
            lines.append(f"| {labels} | {method} | union per structure, Spearman E / F RMS: "
                         f"total σ, epistemic σ (calibrated reference) | | | "
                         f"| {fmt(u['energy_total'])}, {fmt(u['energy_epistemic'])} "
                         f"({fmt(u['energy_reference'])}) / {fmt(u['force_structure_total'])}, "
                         f"{fmt(u['force_structure_epistemic'])} "
                         f"({fmt(u['force_structure_reference'])}) | | |")
    lines += ["", "| model | ms per energy+forces call |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in results["cost_ms_per_call"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(OUT / "uncertainty_acac"))
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    runs = Path(args.runs).resolve()
    with ProcessPoolExecutor(2) as pool:
        jobs = {labels: pool.submit(fit_and_score, str(runs / labels), args.heads)
                for labels in ("clean", "noisy")}
        results = {labels: job.result() for labels, job in jobs.items()}
    results["cost_ms_per_call"] = cost(runs / "clean", args.heads)
    results["date"] = time.ctime()
    write_json(runs / "compare.json", results)
    print(markdown(results))


if __name__ == "__main__":
    main()
