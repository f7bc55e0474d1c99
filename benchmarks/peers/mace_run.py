#!/usr/bin/env python
"""Peer benchmark: MACE (mace-torch 0.3.16, its own `mace_run_train` CLI) under a wall-clock budget.

Run with the peer venv's python (see setup_mace.sh), e.g.

    OMP_NUM_THREADS=1 .peers/mace/bin/python benchmarks/peers/mace_run.py \
        --train examples/acac/train_300K.xyz --isolated examples/acac/isolated_atoms.xyz \
        --tests examples/acac/test_MD_300K.xyz examples/acac/test_H_transfer.xyz \
        --minutes 60 --snapshots 10,30 --threads 1 --out benchmarks/out/mace_acac

What it does
1. Rewrites the training file into OUT/data/train.xyz with REF_energy / REF_forces keys (what MACE
   reads) and derives the E0s of the training elements from the isolated-atoms file.
2. Runs the stock `mace_run_train` CLI as a subprocess (OMP_NUM_THREADS=T) with the PEERS.md
   hyper-parameters (MACE, num_channels 32, max_L 0, r_max 5.0, batch 5, float32, 5 % validation)
   and a huge --max_num_epochs, so the wall-clock budget is what stops it.
3. Polls OUT/train/checkpoints. When a snapshot time passes, the newest checkpoint is copied to
   OUT/snapshots/. MACE (default behaviour, kept here) writes a checkpoint only when the validation
   loss improves, so a snapshot is the best-on-validation model so far -- exactly what MACE itself
   would turn into its final .model had training stopped then. The end of the budget is always a
   snapshot. Snapshot clock origin: launch of mace_run_train, i.e. it INCLUDES MACE's
   preprocessing (reported separately as `preprocess_s`).
4. Kills the training process group at --minutes. The resident memory of the process group is
   sampled once a second (`peak_rss_mb_train`).
5. Builds a "template" model with the identical command and --max_num_epochs 0 (so MACE writes its
   .model without training; architecture and data-derived constants such as avg_num_neighbors are
   the same), loads each snapshot's state dict into it (strict), saves OUT/snapshots/*.model and
   evaluates them with mace.calculators.MACECalculator on every test file.
6. Times the ASE calculator in a fresh subprocess (ms per energy+forces call on the first test
   structure; `peak_rss_mb_infer` = that subprocess's ru_maxrss).
7. Writes OUT/results.json.

Metrics: see peer_common.py (meV/atom for energies, meV/A over Cartesian components for forces).
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import peer_common as pc

CKPT_RE = re.compile(r"_epoch-(\d+)\.pt$")
EPOCH_RE = re.compile(r"Epoch (\d+): .*RMSE_E_per_atom=\s*([\d.]+) meV, RMSE_F=\s*([\d.]+) meV")
NAME = "mace"
HYPER = {"model": "MACE", "num_channels": 32, "max_L": 0, "r_max": 5.0, "batch_size": 5,
         "default_dtype": "float32", "valid_fraction": 0.05,
         "other": "mace_run_train defaults (loss, lr 0.01, ReduceLROnPlateau, EMA off, no SWA)"}
log = pc.Logger("mace_run")


def make_calculator(model_path: str):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=model_path, device="cpu", default_dtype="float32")


def mace_command(args, train_file: str, work_dir: str, e0s: dict, max_epochs: int) -> list:
    e0s_str = "{" + ", ".join(f"{z}:{e!r}" for z, e in sorted(e0s.items())) + "}"
    exe = os.path.join(os.path.dirname(sys.executable), "mace_run_train")
    if not os.path.exists(exe):
        exe = shutil.which("mace_run_train") or "mace_run_train"
    return [
        exe,
        "--name", NAME,
        "--work_dir", work_dir,
        "--train_file", train_file,
        "--valid_fraction", str(HYPER["valid_fraction"]),
        "--E0s", e0s_str,
        "--energy_key", "REF_energy",
        "--forces_key", "REF_forces",
        "--model", HYPER["model"],
        "--num_channels", str(HYPER["num_channels"]),
        "--max_L", str(HYPER["max_L"]),
        "--r_max", str(HYPER["r_max"]),
        "--batch_size", str(HYPER["batch_size"]),
        "--max_num_epochs", str(max_epochs),
        "--device", "cpu",
        "--default_dtype", HYPER["default_dtype"],
        "--seed", str(args.seed),
        "--eval_interval", "1",
        "--save_cpu",
    ]


def latest_checkpoint(ckpt_dir: str):
    best = None
    if not os.path.isdir(ckpt_dir):
        return None
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.search(name)
        if m and "_swa" not in name:
            ep = int(m.group(1))
            if best is None or ep > best[0]:
                best = (ep, os.path.join(ckpt_dir, name))
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


def train(args, cmd, out_dir, marks):
    ckpt_dir = os.path.join(out_dir, "train", "checkpoints")
    snap_dir = os.path.join(out_dir, "snapshots")
    os.makedirs(snap_dir, exist_ok=True)
    state = {"t_train_start": None, "epochs": []}

    def on_line(line, t):
        if state["t_train_start"] is None and "Started training" in line:
            state["t_train_start"] = round(t, 2)
            log(f"preprocessing done after {t:.1f} s; training started")
        m = EPOCH_RE.search(line)
        if m:
            ep, e, f = int(m.group(1)), float(m.group(2)), float(m.group(3))
            state["epochs"].append((ep, t, e, f))
            if ep % args.print_every == 0:
                log(f"epoch {ep:4d} done at {t:7.1f} s  valid RMSE_E={e:.2f} meV/atom RMSE_F={f:.1f} meV/A")

    def take_snapshot(key, minutes):
        dst = os.path.join(snap_dir, f"snap_{key}min.pt")
        ep = grab_checkpoint(ckpt_dir, dst)
        return {"checkpoint_epoch": ep, "path": dst if ep is not None else None}

    def epochs_done():
        return state["epochs"][-1][0] + 1 if state["epochs"] else 0

    res = pc.run_budgeted(cmd, pc.thread_env(args.threads), os.path.join(out_dir, "train_stdout.log"),
                          args.minutes * 60.0, marks, take_snapshot, on_line=on_line,
                          epochs_done=epochs_done, log=log, name="mace_run_train")
    res["preprocess_s"] = state["t_train_start"]
    res["epochs_done"] = epochs_done()
    res["valid_curve"] = [{"epoch": e, "t_s": round(t, 2), "rmse_e_meV_atom": ee, "rmse_f_meV_A": ff}
                          for e, t, ee, ff in state["epochs"]]
    return res


def build_template(args, train_file, out_dir, e0s) -> tuple[str, float]:
    """Same command with --max_num_epochs 0: MACE writes an (untrained) .model of identical shape."""
    tdir = os.path.join(out_dir, "template")
    shutil.rmtree(tdir, ignore_errors=True)
    # with 0 epochs MACE never creates checkpoints/ but still saves the .model there -> create it
    os.makedirs(os.path.join(tdir, "checkpoints"), exist_ok=True)
    cmd = mace_command(args, train_file, tdir, e0s, max_epochs=0)
    log("building template model (same command, --max_num_epochs 0)")
    t = time.monotonic()
    with open(os.path.join(out_dir, "template_stdout.log"), "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=pc.thread_env(args.threads), check=True)
    path = os.path.join(tdir, f"{NAME}.model")
    if not os.path.exists(path):
        raise RuntimeError(f"template model not written: {path}")
    return path, round(time.monotonic() - t, 2)


def main() -> None:
    p = pc.make_parser(__doc__)
    args = p.parse_args()
    if args._time_model:
        pc.timing_child(args, make_calculator)
        return
    marks = pc.check_args(p, args)
    pc.set_threads(args.threads)
    import importlib.metadata as md

    import ase
    import torch

    out_dir = os.path.abspath(args.out)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(out_dir, exist_ok=True)

    # 1. data
    data = pc.prepare_data(args, data_dir, log, "REF_energy", "REF_forces")
    e0s, tests = data["e0s"], data["tests"]
    train_file = os.path.join(data_dir, "train.xyz")

    # 2-4. train under the budget
    train_dir = os.path.join(out_dir, "train")
    cmd = mace_command(args, train_file, train_dir, e0s, args.max_num_epochs)
    cmd_str = f"OMP_NUM_THREADS={args.threads} " + " ".join(shlex.quote(c) for c in cmd)
    tr = pc.train_or_reuse(args, out_dir, train_dir, cmd_str,
                           lambda: train(args, cmd, out_dir, marks), log)

    # 5. models from checkpoints, evaluation
    template_path, template_s = build_template(args, train_file, out_dir, e0s)
    template = torch.load(template_path, map_location="cpu", weights_only=False)
    results, last_model = {}, None
    for key, snap in tr["snapshots"].items():
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
        calc = make_calculator(model_path)
        results[key] = {}
        for stem, frames in tests.items():
            results[key][stem] = r = pc.evaluate(calc, frames)
            log(f"snapshot {key} min (epoch {snap['checkpoint_epoch']}) {stem}: {pc.metrics_line(r)}")
        last_model = model_path

    # 6. calculator timing in a fresh process (last snapshot's model; cost does not depend on weights)
    timing = {}
    if last_model is not None:
        timing = pc.measure_inference(os.path.abspath(__file__), last_model, data["timing_path"],
                                      args.threads, args.timing_calls,
                                      os.path.join(out_dir, "timing_stderr.log"))
        log(f"ASE MACECalculator: {timing['ms_per_call']:.2f} ms per energy+forces call "
            f"({timing['n_atoms']} atoms, {args.threads} threads), peak RSS {timing['peak_rss_mb_infer']} MB")

    # 7. results
    res = {
        "peer": "mace",
        "mace_version": md.version("mace-torch"),
        "torch_version": torch.__version__,
        "ase_version": ase.__version__,
        **pc.run_fields(args, tr),
        "hyperparameters": HYPER,
        "snapshot_clock": "seconds since launch of mace_run_train (includes MACE preprocessing)",
        "snapshot_selection": "newest MACE checkpoint = best validation loss so far (MACE default)",
        **pc.training_fields(tr, results),
        "template_build_s": template_s,
        "ms_per_call": timing.get("ms_per_call"),
        "ms_per_call_note": pc.timing_note(
            "ASE MACECalculator energy+forces (MACE also computes stress)", timing, data, args),
        **pc.closing_fields(timing, tr, data, cmd_str),
        "valid_curve": tr["valid_curve"],
    }
    pc.write_results(out_dir, res, log)


if __name__ == "__main__":
    main()
