#!/usr/bin/env python
"""Peer benchmark: MACE (mace-torch 0.3.16) trained on acac train_300K under a wall-clock budget.

Run with the peer venv's python (see setup_mace.sh), e.g.

    .peers/mace/bin/python benchmarks/peers/mace_acac.py --minutes 60 --snapshots 10,30,60 \
        --threads 2 --out runs/mace_acac

What it does
1. Rewrites the acac extxyz files into OUT/data with REF_energy / REF_forces keys (what MACE reads),
   and derives the E0s from isolated_atoms.xyz.
2. Runs the stock `mace_run_train` CLI as a subprocess (OMP_NUM_THREADS=T) with the PEERS.md
   hyper-parameters and a huge --max_num_epochs, so the wall-clock budget is what stops it.
3. Polls OUT/train/checkpoints. When a snapshot time passes, the newest checkpoint is copied to
   OUT/snapshots/. MACE (default behaviour, kept here) writes a checkpoint only when the validation
   loss improves, so a snapshot is the best-on-validation model so far -- exactly what MACE itself
   would turn into its final .model had training stopped then.
   Snapshot clock origin: launch of mace_run_train, i.e. it INCLUDES MACE's preprocessing (reading
   data, statistics, neighbour lists, model build, initial validation). The preprocessing time is
   reported separately (`preprocess_s`).
4. Kills the training process group at --minutes.
5. Builds a "template" model with the identical command and --max_num_epochs 0 (so MACE writes its
   .model without training; architecture and data-derived constants such as avg_num_neighbors are
   the same), loads each snapshot's state dict into it (strict), saves OUT/snapshots/*.model and
   evaluates them with mace.calculators.MACECalculator on the test sets.
6. Times the ASE calculator (ms per energy+forces call on one acac molecule).
7. Writes OUT/results.json.

Metrics: energy RMSE/MAE per atom in meV/atom (error of total energy divided by n_atoms); force
RMSE/MAE over all Cartesian components in meV/A (same convention as MACE's own RMSE_F).
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

TEST_SETS = ["test_MD_300K", "test_MD_600K", "test_H_transfer"]
CKPT_RE = re.compile(r"_epoch-(\d+)\.pt$")
EPOCH_RE = re.compile(r"Epoch (\d+): .*RMSE_E_per_atom=\s*([\d.]+) meV, RMSE_F=\s*([\d.]+) meV")


def log(msg: str) -> None:
    print(f"[mace_acac {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def rewrite_extxyz(src: str, dst: str) -> dict:
    """Copy an extxyz file, storing energy/forces under REF_energy/REF_forces."""
    import ase.io
    from ase.calculators.calculator import PropertyNotImplementedError

    frames = ase.io.read(src, index=":")
    out = []
    n_forces = 0
    for at in frames:
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
        # older ASE: keys stay in info/arrays
        if energy is None and "energy" in at.info:
            energy = float(at.info["energy"])
        if forces is None and "forces" in at.arrays:
            forces = np.array(at.arrays["forces"])
        new = at.copy()  # drops the calculator
        new.calc = None
        for k in ("energy", "free_energy"):
            new.info.pop(k, None)
        if "forces" in new.arrays:
            del new.arrays["forces"]
        if energy is not None:
            new.info["REF_energy"] = energy
        if forces is not None:
            new.arrays["REF_forces"] = forces
            n_forces += 1
        out.append(new)
    ase.io.write(dst, out, format="extxyz")
    return {"n_frames": len(out), "n_with_forces": n_forces}


def read_e0s(path: str) -> dict:
    import ase.io

    e0s = {}
    for at in ase.io.read(path, index=":"):
        assert len(at) == 1, "isolated_atoms.xyz must hold single atoms"
        try:
            e = float(at.get_potential_energy())
        except Exception:  # noqa: BLE001
            e = float(at.info["energy"])
        e0s[int(at.numbers[0])] = e
    return e0s


def load_reference(path: str):
    """Frames with REF_energy / REF_forces (forces may be absent)."""
    import ase.io

    frames = ase.io.read(path, index=":")
    energies = np.array([at.info["REF_energy"] for at in frames])
    has_f = all("REF_forces" in at.arrays for at in frames)
    forces = [at.arrays["REF_forces"] for at in frames] if has_f else None
    return frames, energies, forces


# --------------------------------------------------------------------------------------------
# training subprocess
# --------------------------------------------------------------------------------------------
def mace_command(args, data_dir: str, work_dir: str, e0s: dict, max_epochs: int) -> list:
    e0s_str = "{" + ", ".join(f"{z}:{e!r}" for z, e in sorted(e0s.items())) + "}"
    exe = os.path.join(os.path.dirname(sys.executable), "mace_run_train")
    if not os.path.exists(exe):
        exe = shutil.which("mace_run_train") or "mace_run_train"
    return [
        exe,
        "--name", "acac_mace",
        "--work_dir", work_dir,
        "--train_file", os.path.join(data_dir, "train_300K.xyz"),
        "--valid_fraction", "0.05",
        "--E0s", e0s_str,
        "--energy_key", "REF_energy",
        "--forces_key", "REF_forces",
        "--model", "MACE",
        "--num_channels", "32",
        "--max_L", "0",
        "--r_max", "5.0",
        "--batch_size", "5",
        "--max_num_epochs", str(max_epochs),
        "--device", "cpu",
        "--default_dtype", "float32",
        "--seed", str(args.seed),
        "--eval_interval", "1",
        "--save_cpu",
    ]


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def latest_checkpoint(ckpt_dir: str):
    best = None
    for p in glob.glob(os.path.join(ckpt_dir, "*_epoch-*.pt")):
        m = CKPT_RE.search(p)
        if m and "_swa" not in os.path.basename(p):
            ep = int(m.group(1))
            if best is None or ep > best[0]:
                best = (ep, p)
    return best


def grab_checkpoint(ckpt_dir: str, dst: str, tries: int = 40):
    """Copy the newest checkpoint to dst and check it loads (MACE deletes/writes them live)."""
    import torch

    for _ in range(tries):
        found = latest_checkpoint(ckpt_dir)
        if found is None:
            return None
        ep, path = found
        try:
            shutil.copyfile(path, dst)
            torch.load(dst, map_location="cpu", weights_only=False)
            return ep
        except Exception:  # noqa: BLE001  (file vanished or half written) -> retry
            time.sleep(0.25)
    return None


def train_with_snapshots(args, cmd, out_dir, snap_minutes):
    train_dir = os.path.join(out_dir, "train")
    ckpt_dir = os.path.join(train_dir, "checkpoints")
    snap_dir = os.path.join(out_dir, "snapshots")
    os.makedirs(snap_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train_stdout.log")

    state = {"t_train_start": None, "epochs": [], "last_line": ""}
    t0 = time.monotonic()
    logf = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env=thread_env(args.threads), start_new_session=True,
    )
    log(f"started mace_run_train pid={proc.pid}; log: {log_path}")

    def reader():
        for line in proc.stdout:
            t = time.monotonic() - t0
            logf.write(line)
            logf.flush()
            state["last_line"] = line.rstrip()
            if state["t_train_start"] is None and "Started training" in line:
                state["t_train_start"] = t
                log(f"preprocessing done after {t:.1f} s; training started")
            m = EPOCH_RE.search(line)
            if m:
                ep, e, f = int(m.group(1)), float(m.group(2)), float(m.group(3))
                state["epochs"].append((ep, t, e, f))
                if ep % args.print_every == 0:
                    log(f"epoch {ep:4d} done at {t:7.1f} s  valid RMSE_E={e:.2f} meV/atom RMSE_F={f:.1f} meV/A")

    th = threading.Thread(target=reader, daemon=True)
    th.start()

    budget = args.minutes * 60.0
    pending = sorted(snap_minutes)
    snaps = {}
    killed = False
    while True:
        t = time.monotonic() - t0
        while pending and t >= pending[0] * 60.0:
            m = pending.pop(0)
            key = fmt_min(m)
            dst = os.path.join(snap_dir, f"snap_{key}min.pt")
            ep = grab_checkpoint(ckpt_dir, dst)
            done = state["epochs"][-1][0] + 1 if state["epochs"] else 0
            snaps[key] = {"minutes": m, "t_s": round(time.monotonic() - t0, 2),
                          "checkpoint_epoch": ep, "epochs_completed": done,
                          "path": dst if ep is not None else None}
            log(f"snapshot {key} min: {done} epochs completed, best-valid checkpoint = epoch {ep}")
        if proc.poll() is not None:
            break
        if t >= budget:
            log(f"budget of {args.minutes} min reached: stopping training")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            killed = True
            break
        time.sleep(0.2)
    th.join(timeout=5)
    logf.close()
    t_end = time.monotonic() - t0
    rc = proc.returncode
    if not killed and rc != 0:
        raise RuntimeError(f"mace_run_train failed (rc={rc}); last line: {state['last_line']}; see {log_path}")
    # snapshots later than a (premature) end of training get the final checkpoint
    for m in pending:
        key = fmt_min(m)
        dst = os.path.join(snap_dir, f"snap_{key}min.pt")
        ep = grab_checkpoint(ckpt_dir, dst)
        done = state["epochs"][-1][0] + 1 if state["epochs"] else 0
        snaps[key] = {"minutes": m, "t_s": round(t_end, 2), "checkpoint_epoch": ep,
                      "epochs_completed": done, "path": dst if ep is not None else None,
                      "note": "training ended before this snapshot time"}
    return {
        "snapshots": snaps,
        "preprocess_s": state["t_train_start"],
        "train_wall_s": round(t_end, 2),
        "killed_at_budget": killed,
        "returncode": rc,
        "valid_curve": [{"epoch": e, "t_s": round(t, 2), "rmse_e_meV_atom": ee, "rmse_f_meV_A": ff}
                        for e, t, ee, ff in state["epochs"]],
    }


def fmt_min(m: float) -> str:
    return str(int(m)) if float(m).is_integer() else str(m)


def build_template(args, data_dir, out_dir, e0s) -> str:
    """Same command with --max_num_epochs 0: MACE writes an (untrained) .model of identical shape."""
    tdir = os.path.join(out_dir, "template")
    shutil.rmtree(tdir, ignore_errors=True)
    # with 0 epochs MACE never creates checkpoints/ but still saves the .model there -> create it
    os.makedirs(os.path.join(tdir, "checkpoints"), exist_ok=True)
    cmd = mace_command(args, data_dir, tdir, e0s, max_epochs=0)
    log("building template model (same command, --max_num_epochs 0)")
    with open(os.path.join(out_dir, "template_stdout.log"), "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=thread_env(args.threads), check=True)
    path = os.path.join(tdir, "acac_mace.model")
    if not os.path.exists(path):
        raise RuntimeError(f"template model not written: {path}")
    return path


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def evaluate(calc, frames, e_ref, f_ref) -> dict:
    e_err, f_err = [], []
    for i, at in enumerate(frames):
        a = at.copy()
        a.calc = calc
        e = a.get_potential_energy()
        e_err.append((e - e_ref[i]) / len(a))
        if f_ref is not None:
            f_err.append((a.get_forces() - f_ref[i]).ravel())
    e_err = np.array(e_err) * 1e3
    res = {"n_frames": len(frames),
           "energy_rmse_meV_atom": float(np.sqrt(np.mean(e_err ** 2))),
           "energy_mae_meV_atom": float(np.mean(np.abs(e_err)))}
    if f_ref is not None:
        f_err = np.concatenate(f_err) * 1e3
        res["force_rmse_meV_A"] = float(np.sqrt(np.mean(f_err ** 2)))
        res["force_mae_meV_A"] = float(np.mean(np.abs(f_err)))
    return res


def time_calculator(calc, atoms, n_calls=50, n_warm=10) -> float:
    a = atoms.copy()
    a.calc = calc
    rng = np.random.default_rng(0)
    base = a.get_positions().copy()
    for _ in range(n_warm):
        a.set_positions(base + 1e-3 * rng.standard_normal(base.shape))
        a.get_potential_energy(); a.get_forces()
    times = []
    for _ in range(n_calls):
        a.set_positions(base + 1e-3 * rng.standard_normal(base.shape))  # defeat ASE's result cache
        t = time.perf_counter()
        a.get_potential_energy(); a.get_forces()
        times.append(time.perf_counter() - t)
    return float(np.mean(times) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="wall budget of training (min)")
    p.add_argument("--snapshots", default="10,30,60", help="comma list of minutes at which to snapshot")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="/work/shared/data/acac")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max_num_epochs", type=int, default=100000, help="large: the budget stops training")
    p.add_argument("--timing_calls", type=int, default=50)
    p.add_argument("--print_every", type=int, default=10, help="print every n-th epoch's validation line")
    p.add_argument("--eval_only", action="store_true",
                   help="skip training; re-evaluate the snapshots of an earlier run in --out")
    args = p.parse_args()

    snap_minutes = sorted({float(x) for x in args.snapshots.split(",") if x.strip()})
    if any(m > args.minutes for m in snap_minutes):
        p.error("snapshot times must be <= --minutes")

    os.environ.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    import torch

    torch.set_num_threads(args.threads)
    import ase
    import importlib.metadata as md

    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)

    # 1. data
    data_info = {}
    for name in ["train_300K"] + TEST_SETS:
        data_info[name] = rewrite_extxyz(os.path.join(args.data, f"{name}.xyz"),
                                         os.path.join(data_dir, f"{name}.xyz"))
        log(f"rewrote {name}: {data_info[name]}")
    e0s = read_e0s(os.path.join(args.data, "isolated_atoms.xyz"))
    log(f"E0s from isolated_atoms.xyz: {e0s}")

    # 2-4. train under the budget
    train_dir = os.path.join(out_dir, "train")
    cmd = mace_command(args, data_dir, train_dir, e0s, args.max_num_epochs)
    cmd_str = f"OMP_NUM_THREADS={args.threads} " + " ".join(shlex.quote(c) for c in cmd)
    info_path = os.path.join(out_dir, "train_info.json")
    if args.eval_only:
        with open(info_path) as f:
            train = json.load(f)
        log(f"--eval_only: using snapshots recorded in {info_path}")
    else:
        shutil.rmtree(train_dir, ignore_errors=True)  # a stale checkpoint would be mistaken for ours
        log(f"command: {cmd_str}")
        train = train_with_snapshots(args, cmd, out_dir, snap_minutes)
        train["command"] = cmd_str
        train["threads"] = args.threads
        train["budget_minutes"] = args.minutes
        with open(info_path, "w") as f:
            json.dump(train, f, indent=1)
    cmd_str = train.get("command", cmd_str)

    # 5. models from checkpoints
    template_path = build_template(args, data_dir, out_dir, e0s)
    template = torch.load(template_path, map_location="cpu", weights_only=False)
    from mace.calculators import MACECalculator

    tests = {n: load_reference(os.path.join(data_dir, f"{n}.xyz")) for n in TEST_SETS}
    results = {}
    calc_for_timing = None
    for key, snap in train["snapshots"].items():
        if snap["path"] is None:
            log(f"snapshot {key} min: no checkpoint yet (training had not finished an epoch)")
            results[key] = None
            continue
        ckpt = torch.load(snap["path"], map_location="cpu", weights_only=False)
        model = copy.deepcopy(template)
        model.load_state_dict(ckpt["model"], strict=True)
        model_path = snap["path"][:-3] + ".model"
        torch.save(model, model_path)
        snap["model_path"] = model_path
        calc = MACECalculator(model_paths=model_path, device="cpu")
        results[key] = {}
        for n, (frames, e_ref, f_ref) in tests.items():
            results[key][n] = evaluate(calc, frames, e_ref, f_ref)
            r = results[key][n]
            msg = f"E RMSE {r['energy_rmse_meV_atom']:.2f} MAE {r['energy_mae_meV_atom']:.2f} meV/atom"
            if "force_rmse_meV_A" in r:
                msg += f"; F RMSE {r['force_rmse_meV_A']:.1f} MAE {r['force_mae_meV_A']:.1f} meV/A"
            log(f"snapshot {key} min (epoch {snap['checkpoint_epoch']}) {n}: {msg}")
        calc_for_timing = calc

    # 6. calculator timing (last snapshot's model; cost does not depend on weights)
    ms = None
    if calc_for_timing is not None:
        ms = time_calculator(calc_for_timing, tests["test_MD_300K"][0][0], n_calls=args.timing_calls)
        log(f"ASE MACECalculator: {ms:.2f} ms per energy+forces call (15 atoms, {args.threads} threads)")

    # 7. results
    res = {
        "peer": "mace",
        "mace_version": md.version("mace-torch"),
        "torch_version": torch.__version__,
        "ase_version": ase.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor()},
        "threads": train.get("threads", args.threads),
        "eval_threads": args.threads,
        "seed": args.seed,
        "budget_minutes": train.get("budget_minutes", args.minutes),
        "snapshot_clock": "seconds since launch of mace_run_train (includes MACE preprocessing)",
        "snapshot_selection": "newest MACE checkpoint = best validation loss so far (MACE default)",
        "preprocess_s": train["preprocess_s"],
        "train_wall_s": train["train_wall_s"],
        "killed_at_budget": train["killed_at_budget"],
        "snapshots": results,
        "epochs_at_snapshot": {k: s["epochs_completed"] for k, s in train["snapshots"].items()},
        "checkpoint_epoch_at_snapshot": {k: s["checkpoint_epoch"] for k, s in train["snapshots"].items()},
        "snapshot_files": {k: s.get("model_path") for k, s in train["snapshots"].items()},
        "ms_per_call": ms,
        "ms_per_call_note": "ASE MACECalculator energy+forces (MACE also computes stress), one 15-atom "
                            f"acac, mean of {args.timing_calls} calls after 10 warm-up, torch threads={args.threads}",
        "metric_units": {"energy": "meV/atom", "force": "meV/A, over Cartesian components"},
        "data": data_info,
        "E0s": {str(k): v for k, v in e0s.items()},
        "command": cmd_str,
        "valid_curve": train["valid_curve"],
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {os.path.join(out_dir, 'results.json')}")


if __name__ == "__main__":
    main()
