"""The active-learning loop of `mlpot learn`.

Iteration k (folder OUT/iter_k):
1. (k > 0) explore with Langevin MD on iteration k−1's model, from random labelled
   structures (or score a given pool of unlabelled structures with it), and select snapshots whose epistemic force σ passes the threshold, most
   uncertain first, without near-duplicates of each other or of labelled structures
   (selected.xyz, selection.json); iteration 0 takes the start structures;
2. label them with the engine, on Dask workers, into the label database (a restart labels
   only what is missing);
3. train an ensemble on every successful label of the engine's level (members start from
   iteration k−1's members: warm start) and score it on the test set.

OUT/state.json records the iterations finished and their history (labels, test errors, mean
σ of the selections); a killed loop restarted with the same command resumes with the first
unfinished step (a half-trained iteration trains again). The loop stops after
``iterations``, at ``max_labels``, at ``target_force_rmse`` or when nothing is uncertain.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from ase.io import read, write

from mlpot.config import LearnConfig, RunConfig
from mlpot.errors import ModelFileError
from mlpot.files import atomic_path, locked_folder, write_json_atomic
from mlpot.serialize import read_json_object


def _state(out: Path) -> dict:
    path = out / "state.json"
    if not path.exists():
        return {"finished": 0, "history": []}
    state = read_json_object(path)
    if (isinstance(state.get("finished"), bool) or not isinstance(state.get("finished"), int)
            or state["finished"] < 0 or not isinstance(state.get("history"), list)):
        raise ModelFileError(f"{path}: fields 'finished' (a whole number ≥ 0) and 'history' "
                             "(a list) expected")
    return state


def _run_config(config: LearnConfig, db: Path, level: str, out: Path, init: Path | None,
                seed: int) -> RunConfig:
    data = {"train": str(db), "db_select": f"level={level}",
            "valid_fraction": config.valid_fraction,
            "test": [config.test] if config.test else []}
    training = config.training.model_dump()
    training["init_model"] = str(init) if init else None
    return RunConfig.model_validate({"data": data, "model": config.model.model_dump(),
                                     "training": training, "seed": seed, "out": str(out)})


def _metrics(path: Path) -> dict:
    """The "metrics" object of a training run's metrics.json, checked."""
    metrics = read_json_object(path).get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise ModelFileError(f"{path}: field 'metrics' must be an object of objects")
    return metrics


def run_learning(config: LearnConfig, progress: bool = True) -> dict:
    """Run (or resume) the loop; returns the state (history of every iteration). The output
    folder is locked for the run (a second run into it fails at once)."""
    with locked_folder(config.out):
        return _run_learning(config, progress)


def _run_learning(config: LearnConfig, progress: bool) -> dict:
    from mlpot.label.runner import label_structures
    from mlpot.label.store import LabelStore
    from mlpot.train.run import run_training

    say = print if progress else (lambda *a, **k: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(config.db) if config.db else out / "labels.db"
    engine = config.engine.build()
    state = _state(out)
    for iteration in range(state["finished"], config.iterations):
        rng = np.random.default_rng([config.seed, iteration])  # same on a resumed run
        folder = out / f"iter_{iteration:02d}"
        folder.mkdir(exist_ok=True)
        record = {"iteration": iteration}
        if iteration == 0:
            inputs = read(config.start, index=":")
        else:
            inputs, found = _explore_and_select(config, out / f"iter_{iteration - 1:02d}",
                                                folder, db, engine.level, rng, say)
            record.update(found)
            if not inputs:
                state.update(stopped_by="nothing uncertain")
                write_json_atomic(out / "state.json", state)
                break
        say(f"iteration {iteration}: labelling {len(inputs)} structures ({engine.level})",
            flush=True)
        labelled = label_structures(inputs, engine, db, scheduler=config.scheduler,
                                    workers=config.workers, progress=progress)
        train_out = folder / "train"
        if not (train_out / "metrics.json").exists():
            shutil.rmtree(train_out, ignore_errors=True)  # an interrupted training restarts
            init = out / f"iter_{iteration - 1:02d}" / "train" / "model" if iteration else None
            run_training(_run_config(config, db, engine.level, train_out, init,
                                     config.seed + iteration), progress=progress)
        metrics = _metrics(train_out / "metrics.json")
        store = LabelStore(db)
        n_labels = store.db.count(level=engine.level, failed=False)
        test_name = Path(config.test).stem if config.test else None
        test_rmse = metrics.get(test_name, {}).get("force_rmse") if test_name else None
        record.update(labels=n_labels, labelled_now=labelled["written"],
                      failed_labels=store.db.count(level=engine.level, failed=True),
                      test_force_rmse=test_rmse, metrics=metrics)
        say(f"iteration {iteration}: {n_labels} labels, test force RMSE "
            f"{test_rmse if test_rmse is None else round(test_rmse, 1)} meV/Å", flush=True)
        stop = None
        if config.max_labels is not None and n_labels >= config.max_labels:
            stop = "max_labels"
        elif (config.target_force_rmse is not None and test_rmse is not None
              and test_rmse <= config.target_force_rmse):
            stop = "target_force_rmse"
        state["history"].append(record)
        state.update(finished=iteration + 1, stopped_by=stop)
        write_json_atomic(out / "state.json", state)
        if stop:
            break
    _plot(state, out / "learning.png")
    return state


def _explore_and_select(config: LearnConfig, previous: Path, folder: Path, db: Path,
                        level: str, rng, say) -> tuple[list, dict]:
    """Explore with the previous iteration's model and choose what to label next; the choice
    is kept in ``folder``/selected.xyz (reused on a resumed run)."""
    from mlpot.active.explore import explore, pool_sigmas
    from mlpot.active.select import select
    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.label.store import LabelStore
    from mlpot.uncertainty.ensemble import load_model

    chosen_file = folder / "selected.xyz"
    summary_file = folder / "selection.json"
    if summary_file.exists():
        found = read_json_object(summary_file)
        if not isinstance(found.get("selected"), int):
            raise ModelFileError(f"{summary_file}: field 'selected' must be a whole number")
        return (read(chosen_file, index=":") if found["selected"] else []), found
    known = [row.toatoms() for row in LabelStore(db).rows(level=level, failed=False)]
    model = load_model(previous / "train" / "model")
    e, s = config.explore, config.select
    if e.pool:  # candidates given: the model's σ on each
        candidates = read(e.pool, index=":")
        sigmas = pool_sigmas(model, candidates)
    else:
        calculator = MlpotCalculator(model)
        starts = [known[k] for k in rng.integers(0, len(known), e.trajectories)]
        candidates, sigmas = explore(calculator, starts, e.temperature, e.steps, e.dt,
                                     e.interval, e.friction, e.stop_sigma,
                                     seed=int(rng.integers(1 << 30)))
    room = s.max_new if config.max_labels is None else max(
        min(s.max_new, config.max_labels - len(known)), 0)
    chosen = select(candidates, sigmas, known, s.force_sigma, room, s.min_distance,
                    s.strategy, rng)
    selected = [candidates[k] for k in chosen]
    if selected:
        with atomic_path(chosen_file, suffix=".xyz") as tmp:
            write(tmp, selected, format="extxyz")
    found = {"candidates": len(candidates), "selected": len(chosen),
             "candidate_sigma_mean": float(np.mean(sigmas)) if len(sigmas) else None,
             "selected_sigma_mean": float(np.mean(sigmas[chosen])) if chosen else None}
    write_json_atomic(summary_file, found)
    say(f"{folder.name}: {len(candidates)} candidates scored with {previous.name}'s model, "
        f"{len(chosen)} selected (σ > {s.force_sigma} eV/Å)", flush=True)
    # the file is the record: label exactly what a resumed run would read back
    return (read(chosen_file, index=":") if selected else []), found


def _plot(state: dict, path: Path) -> None:
    """Test force RMSE against the number of labels."""
    points = [(h["labels"], h["test_force_rmse"]) for h in state["history"]
              if h.get("test_force_rmse") is not None]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlpot.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(*zip(*points), "o-")
    ax.set_xlabel("labelled structures")
    ax.set_ylabel("test force RMSE (meV/Å)")
    ax.set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
