"""Shared parts of the peer benchmark runners (mace_run.py, nequip_run.py).

Each runner is executed with its peer's own venv python, so this module uses only the standard
library, numpy and ASE (present in every peer venv). It holds the common command line, the data
rewriting, the wall-clock-budgeted training loop with snapshots and memory sampling, the
evaluation (errors against the reference labels), the timing of an ASE calculator in a fresh
subprocess and the results.json fields every runner writes.

Conventions (identical for all peers):
- energy RMSE/MAE in meV/atom: error of the total energy of a frame divided by its number of atoms;
- force RMSE/MAE in meV/A over all Cartesian components of all atoms of the frames that carry
  reference forces (frames without forces only count for the energy);
- ms_per_call: mean wall time of one get_potential_energy() + get_forces() on the first structure of
  the first test file, positions jittered by 1e-3 A before every call so ASE's cache cannot answer,
  after 10 warm-up calls; measured in a fresh subprocess whose peak resident memory (VmHWM, see
  timing_child) is peak_rss_mb_infer;
- peak_rss_mb_train: peak over time of the summed resident set size of the training process group
  (the trainer and any child it starts), sampled once a second from /proc.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
TIMING_TAG = "PEER_TIMING_JSON "
METRIC_UNITS = {"energy": "meV/atom", "force": "meV/A, over Cartesian components"}


class Logger:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, msg: str) -> None:
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def make_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", help="training extxyz (energies + forces); 5%% of it is the validation split")
    p.add_argument("--isolated", help="extxyz of isolated atoms; their energies are the per-element E0s")
    p.add_argument("--tests", nargs="+", help="test extxyz files (results keyed by file stem)")
    p.add_argument("--minutes", type=float, help="wall-clock budget of training (min)")
    p.add_argument("--snapshots", default="10,30",
                   help="comma list of minutes at which the best-on-validation model is taken; "
                        "the end of the budget is always added")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads for training and inference")
    p.add_argument("--out", help="output directory (results.json, logs, models)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max_num_epochs", type=int, default=100000, help="large: the budget stops training")
    p.add_argument("--timing_calls", type=int, default=50, help="timed calculator calls (after 10 warm-up)")
    p.add_argument("--print_every", type=int, default=10, help="print every n-th epoch's validation line")
    p.add_argument("--eval_only", action="store_true",
                   help="skip training; re-evaluate the snapshots of an earlier run in --out")
    # internal: the fresh timing subprocess
    p.add_argument("--_time_model", help=argparse.SUPPRESS)
    p.add_argument("--_time_atoms", help=argparse.SUPPRESS)
    return p


def check_args(p: argparse.ArgumentParser, args) -> list[float]:
    """Validate the public arguments; returns the sorted snapshot marks (minutes), budget included."""
    for name in ("train", "isolated", "tests", "minutes", "out"):
        if getattr(args, name) in (None, []):
            p.error(f"--{name} is required")
    for path in [args.train, args.isolated, *args.tests]:
        if not os.path.isfile(path):
            p.error(f"no such file: {path}")
    stems = [Path(t).stem for t in args.tests]
    if len(set(stems)) != len(stems):
        p.error(f"test files must have distinct stems (results are keyed by stem): {stems}")
    marks = {float(x) for x in args.snapshots.split(",") if x.strip()}
    if any(m <= 0 or m > args.minutes for m in marks):
        p.error("snapshot times must be in (0, --minutes]")
    marks.add(float(args.minutes))
    return sorted(marks)


def fmt_min(m: float) -> str:
    return str(int(m)) if float(m).is_integer() else str(m)


def thread_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def set_threads(threads: int) -> None:
    os.environ.update({k: str(threads) for k in THREAD_VARS})
    import torch

    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def read_labelled(path: str) -> list[dict]:
    """Frames of an extxyz file with their reference energy (eV) and forces (eV/A, or None).

    ASE >= 3.28 moves `energy`/`forces` of the file into a SinglePointCalculator; older ASE leaves
    them in info/arrays. Both are handled. The returned atoms carry no calculator and no labels.
    """
    import ase.io
    from ase.calculators.calculator import PropertyNotImplementedError

    out = []
    for at in ase.io.read(path, index=":"):
        energy = forces = None
        if at.calc is not None:
            try:
                energy = float(at.get_potential_energy())
            except (PropertyNotImplementedError, RuntimeError):
                energy = None
            try:
                forces = np.array(at.get_forces())
            except (PropertyNotImplementedError, RuntimeError):
                forces = None
        if energy is None and "energy" in at.info:
            energy = float(at.info["energy"])
        if forces is None and "forces" in at.arrays:
            forces = np.array(at.arrays["forces"])
        if energy is None:
            raise ValueError(f"{path}: a frame has no energy")
        clean = at.copy()
        clean.calc = None
        for k in ("energy", "free_energy", "REF_energy"):
            clean.info.pop(k, None)
        for k in ("forces", "REF_forces"):
            if k in clean.arrays:
                del clean.arrays[k]
        out.append({"atoms": clean, "energy": energy, "forces": forces})
    return out


def write_labelled(frames: list[dict], dst: str, energy_key: str | None, forces_key: str | None) -> dict:
    """Write frames to extxyz. With keys (e.g. REF_energy/REF_forces) the labels go into info/arrays
    under those names; with None they go into a SinglePointCalculator, i.e. ASE's standard
    `energy=` / `forces` columns."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    out, n_forces = [], 0
    for fr in frames:
        at = fr["atoms"].copy()
        if fr["forces"] is not None:
            n_forces += 1
        if energy_key is None:
            kw = {"energy": fr["energy"]}
            if fr["forces"] is not None:
                kw["forces"] = fr["forces"]
            at.calc = SinglePointCalculator(at, **kw)
        else:
            at.info[energy_key] = fr["energy"]
            if fr["forces"] is not None:
                at.arrays[forces_key] = fr["forces"]
        out.append(at)
    ase.io.write(dst, out, format="extxyz")
    return {"n_frames": len(out), "n_with_forces": n_forces}


def read_e0s(path: str) -> dict[int, float]:
    e0s = {}
    for fr in read_labelled(path):
        at = fr["atoms"]
        if len(at) != 1:
            raise ValueError(f"{path}: isolated-atom frames must hold a single atom")
        e0s[int(at.numbers[0])] = fr["energy"]
    return e0s


def species(frames: list[dict]) -> set[int]:
    return {int(z) for fr in frames for z in fr["atoms"].numbers}


def prepare_data(args, data_dir: str, log, energy_key, forces_key) -> dict:
    """Rewrite train and test files into data_dir; E0s restricted to the training elements."""
    os.makedirs(data_dir, exist_ok=True)
    train = read_labelled(args.train)
    if any(fr["forces"] is None for fr in train):
        raise ValueError(f"{args.train}: every training frame needs forces")
    z_train = species(train)
    info = {"train": write_labelled(train, os.path.join(data_dir, "train.xyz"), energy_key, forces_key)}
    info["train"]["path"] = os.path.abspath(args.train)
    log(f"rewrote train {args.train}: {info['train']['n_frames']} frames")
    tests = {}
    for path in args.tests:
        stem = Path(path).stem
        frames = read_labelled(path)
        extra = species(frames) - z_train
        if extra:
            raise ValueError(f"{path}: elements {sorted(extra)} do not occur in the training file")
        tests[stem] = frames
        info[stem] = {"path": os.path.abspath(path), "n_frames": len(frames),
                      "n_with_forces": sum(fr["forces"] is not None for fr in frames)}
        log(f"test {stem}: {info[stem]['n_frames']} frames, {info[stem]['n_with_forces']} with forces")
    e0s_all = read_e0s(args.isolated)
    missing = z_train - set(e0s_all)
    if missing:
        raise ValueError(f"{args.isolated}: no isolated-atom energy for Z={sorted(missing)}")
    e0s = {z: e0s_all[z] for z in sorted(z_train)}
    log(f"E0s (eV) from {args.isolated}: {e0s}")
    # the first test structure is the timing structure; keep it as a file for the subprocess
    timing_path = os.path.join(data_dir, "timing_structure.xyz")
    import ase.io

    first_stem = Path(args.tests[0]).stem
    ase.io.write(timing_path, tests[first_stem][0]["atoms"], format="extxyz")
    return {"tests": tests, "e0s": e0s, "info": info, "timing_path": timing_path,
            "timing_structure": {"file": first_stem, "index": 0,
                                 "n_atoms": len(tests[first_stem][0]["atoms"])}}


# --------------------------------------------------------------------------------------------
# training under a wall-clock budget
# --------------------------------------------------------------------------------------------
def group_rss_bytes(pgid: int) -> int:
    """Summed resident set size of all processes of a process group (Linux /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # field 5 (pgrp) follows the parenthesised command name, which may contain spaces
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


class RSSSampler(threading.Thread):
    def __init__(self, pgid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pgid, self.interval = pgid, interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, group_rss_bytes(self.pgid))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def run_budgeted(cmd, env, log_path, budget_s, marks, take_snapshot, on_line=None, poll=None,
                 epochs_done=None, log=print, name="trainer"):
    """Run cmd (own process group) until it ends or budget_s passes.

    At each mark (minutes since launch) take_snapshot(key, minutes) -> dict is called; it copies the
    current best-on-validation checkpoint. on_line(line, t) sees every output line, poll(t) is
    called about 5 times a second, epochs_done() gives the epochs completed so far.
    """
    t0 = time.monotonic()
    last = {"line": ""}
    logf = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=env, start_new_session=True)
    sampler = RSSSampler(proc.pid)
    sampler.start()
    log(f"started {name} pid={proc.pid}; log: {log_path}")

    def reader():
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            last["line"] = line.rstrip()
            if on_line is not None:
                on_line(line, time.monotonic() - t0)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    pending = list(marks)
    snaps, killed = {}, False

    def snapshot(m, note=None):
        key = fmt_min(m)
        rec = {"minutes": m, "t_s": round(time.monotonic() - t0, 2),
               "epochs_completed": epochs_done() if epochs_done else None}
        rec.update(take_snapshot(key, m))
        if note:
            rec["note"] = note
        snaps[key] = rec
        log(f"snapshot {key} min: {rec['epochs_completed']} epochs completed, "
            f"best-valid checkpoint = epoch {rec.get('checkpoint_epoch')}")

    while True:
        t = time.monotonic() - t0
        if poll is not None:
            poll(t)
        while pending and t >= pending[0] * 60.0:
            snapshot(pending.pop(0))
        if proc.poll() is not None:
            break
        if t >= budget_s:
            log(f"budget of {budget_s / 60:g} min reached: stopping {name}")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            killed = True
            break
        time.sleep(0.2)
    sampler.stop()
    th.join(timeout=5)
    logf.close()
    t_end = time.monotonic() - t0
    if poll is not None:
        poll(t_end)
    rc = proc.returncode
    if not killed and rc != 0:
        raise RuntimeError(f"{name} failed (rc={rc}); last line: {last['line']}; see {log_path}")
    for m in pending:  # training ended by itself before these marks
        snapshot(m, note="training ended before this snapshot time")
    return {"snapshots": snaps, "train_wall_s": round(t_end, 2), "killed_at_budget": killed,
            "returncode": rc, "peak_rss_mb_train": round(sampler.peak / 2**20, 1)}


# --------------------------------------------------------------------------------------------
# evaluation and timing
# --------------------------------------------------------------------------------------------
def evaluate(calc, frames: list[dict]) -> dict:
    e_err, f_err = [], []
    for fr in frames:
        a = fr["atoms"].copy()
        a.calc = calc
        e_err.append((a.get_potential_energy() - fr["energy"]) / len(a))
        if fr["forces"] is not None:
            f_err.append((a.get_forces() - fr["forces"]).ravel())
    e_err = np.array(e_err) * 1e3
    res = {"n_frames": len(frames), "n_frames_with_forces": len(f_err),
           "energy_rmse_meV_atom": float(np.sqrt(np.mean(e_err ** 2))),
           "energy_mae_meV_atom": float(np.mean(np.abs(e_err)))}
    if f_err:
        f = np.concatenate(f_err) * 1e3
        res["force_rmse_meV_A"] = float(np.sqrt(np.mean(f ** 2)))
        res["force_mae_meV_A"] = float(np.mean(np.abs(f)))
    return res


def metrics_line(r: dict) -> str:
    msg = f"E RMSE {r['energy_rmse_meV_atom']:.2f} MAE {r['energy_mae_meV_atom']:.2f} meV/atom"
    if "force_rmse_meV_A" in r:
        msg += f"; F RMSE {r['force_rmse_meV_A']:.1f} MAE {r['force_mae_meV_A']:.1f} meV/A"
    return msg


def time_calculator(calc, atoms, n_calls=50, n_warm=10) -> float:
    a = atoms.copy()
    a.calc = calc
    rng = np.random.default_rng(0)
    base = a.get_positions().copy()
    for _ in range(n_warm):
        a.set_positions(base + 1e-3 * rng.standard_normal(base.shape))
        a.get_potential_energy()
        a.get_forces()
    times = []
    for _ in range(n_calls):
        a.set_positions(base + 1e-3 * rng.standard_normal(base.shape))  # defeat ASE's result cache
        t = time.perf_counter()
        a.get_potential_energy()
        a.get_forces()
        times.append(time.perf_counter() - t)
    return float(np.mean(times) * 1e3)


def timing_child(args, make_calculator) -> None:
    """Body of the fresh timing subprocess: load the model, time it, report ru_maxrss."""
    import ase.io

    set_threads(args.threads)
    t = time.perf_counter()
    calc = make_calculator(args._time_model)
    load_s = time.perf_counter() - t
    atoms = ase.io.read(args._time_atoms, index=0)
    ms = time_calculator(calc, atoms, n_calls=args.timing_calls)
    # Linux: ru_maxrss (KiB) of a process started by fork/vfork + exec keeps the parent's RSS at
    # the fork (exec carries the old mm's high-water mark into signal->maxrss), so it reports the
    # benchmark driver's memory, not ours. VmHWM is the high-water mark of this process image alone.
    ru_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm_mb = None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm_mb = int(line.split()[1]) / 1024
    print(TIMING_TAG + json.dumps({"ms_per_call": ms, "peak_rss_mb_infer": round(hwm_mb or ru_mb, 1),
                                   "ru_maxrss_mb": round(ru_mb, 1), "load_s": round(load_s, 3),
                                   "n_atoms": len(atoms)}), flush=True)


def measure_inference(script: str, model_path: str, atoms_path: str, threads: int, n_calls: int,
                      log_path: str, env_extra: dict | None = None,
                      python: str = sys.executable) -> dict:
    """Time ``script``'s timing child (run by the interpreter ``python``) in a fresh process."""
    cmd = [python, script, "--_time_model", model_path, "--_time_atoms", atoms_path,
           "--threads", str(threads), "--timing_calls", str(n_calls)]
    with open(log_path, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True,
                              env=thread_env(threads, env_extra))
    for line in proc.stdout.splitlines():
        if line.startswith(TIMING_TAG):
            return json.loads(line[len(TIMING_TAG):])
    raise RuntimeError(f"timing subprocess failed (rc={proc.returncode}); see {log_path}")


def machine_info() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "processor": platform.processor(), "load_avg_at_end": os.getloadavg()}


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def s_per_epoch(curve: list[dict], preprocess_s) -> float | None:
    """Mean wall seconds per epoch between the first and last validation line."""
    if len(curve) >= 2:
        return round((curve[-1]["t_s"] - curve[0]["t_s"]) / (curve[-1]["epoch"] - curve[0]["epoch"]), 2)
    if len(curve) == 1 and preprocess_s is not None:
        return round(curve[0]["t_s"] - preprocess_s, 2)
    return None


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
def write_json(path: str, data) -> None:
    """``data`` as JSON (indent 1) in ``path``."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def train_or_reuse(args, out_dir: str, train_dir: str, cmd_str: str, train, log) -> dict:
    """The training record: ``train()``'s (after removing ``train_dir``, where a stale
    checkpoint would be mistaken for this run's), with the command, threads and budget, saved
    to OUT/train_info.json; with --eval_only the one an earlier run saved there."""
    info_path = os.path.join(out_dir, "train_info.json")
    if args.eval_only:
        with open(info_path) as f:
            tr = json.load(f)
        log(f"--eval_only: using snapshots recorded in {info_path}")
        return tr
    shutil.rmtree(train_dir, ignore_errors=True)
    log(f"command: {cmd_str}")
    tr = train()
    tr.update(command=cmd_str, threads=args.threads, budget_minutes=args.minutes)
    write_json(info_path, tr)
    return tr


def run_fields(args, tr: dict) -> dict:
    """results.json's date, machine, threads (of training; --threads of evaluation in
    eval_threads), seed and budget_minutes."""
    return {"date": now_iso(), "machine": machine_info(),
            "threads": tr.get("threads", args.threads), "eval_threads": args.threads,
            "seed": args.seed, "budget_minutes": tr.get("budget_minutes", args.minutes)}


def training_fields(tr: dict, results: dict) -> dict:
    """results.json's training record (preprocess_s … s_per_epoch), the metrics per snapshot
    (``results``) and per snapshot its epochs, checkpoint epoch and model file."""
    snaps = tr["snapshots"]
    return {"preprocess_s": tr["preprocess_s"], "train_wall_s": tr["train_wall_s"],
            "killed_at_budget": tr["killed_at_budget"], "epochs_done": tr.get("epochs_done"),
            "s_per_epoch": s_per_epoch(tr["valid_curve"], tr["preprocess_s"]),
            "snapshots": results,
            "epochs_at_snapshot": {k: s["epochs_completed"] for k, s in snaps.items()},
            "checkpoint_epoch_at_snapshot": {k: s["checkpoint_epoch"] for k, s in snaps.items()},
            "snapshot_files": {k: s.get("model_path") for k, s in snaps.items()}}


def timing_note(calculator: str, timing: dict, data: dict, args) -> str:
    """results.json's ms_per_call_note: what ``calculator`` was timed on, and how."""
    return (f"{calculator} in a fresh subprocess, {timing.get('n_atoms')} atoms "
            f"({data['timing_structure']}), mean of {args.timing_calls} calls after 10 warm-up, "
            f"positions jittered 1e-3 A, torch threads={args.threads}")


def closing_fields(timing: dict, tr: dict, data: dict, cmd_str: str) -> dict:
    """results.json's model_load_s, peak memory (training, inference), metric units, data,
    E0s (eV by Z) and the training command."""
    return {"model_load_s": timing.get("load_s"),
            "peak_rss_mb_train": tr.get("peak_rss_mb_train"),
            "peak_rss_mb_infer": timing.get("peak_rss_mb_infer"),
            "metric_units": dict(METRIC_UNITS), "data": data["info"],
            "E0s": {str(k): v for k, v in data["e0s"].items()},
            "command": tr.get("command", cmd_str)}


def write_results(out_dir: str, res: dict, log) -> None:
    """OUT/results.json."""
    path = os.path.join(out_dir, "results.json")
    write_json(path, res)
    log(f"wrote {path}")
