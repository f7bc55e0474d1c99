#!/usr/bin/env python
"""Peer benchmark: NequIP (nequip 0.19.1, its own `nequip-train` CLI) under a wall-clock budget.

Run with the peer venv's python (see setup_nequip.sh), e.g.

    OMP_NUM_THREADS=1 .peers/nequip/bin/python benchmarks/peers/nequip_run.py \
        --train examples/acac/train_300K.xyz --isolated examples/acac/isolated_atoms.xyz \
        --tests examples/acac/test_MD_300K.xyz examples/acac/test_H_transfer.xyz \
        --minutes 60 --snapshots 10,30 --threads 1 --out benchmarks/out/nequip_acac

Same command line and results.json layout as mace_run.py. What it does
1. Rewrites the training file into OUT/data/train.xyz with ASE's standard `energy=` / `forces`
   columns (a SinglePointCalculator on writing), which NequIP's ASEDataModule reads as
   total_energy / forces; E0s of the training elements come from the isolated-atoms file.
2. Writes a Hydra config OUT/config/config.yaml after NequIP's configs/tutorial.yaml (see NEQUIP_*
   below) and runs the stock `nequip-train -cp OUT/config -cn config hydra.run.dir=OUT/train` as a
   subprocess (OMP_NUM_THREADS=T) with a huge max_epochs, so the wall-clock budget stops it.
3. Lightning's ModelCheckpoint (monitor val0_epoch/weighted_sum, save_top_k 1) keeps OUT/train/best.ckpt
   = the best-on-validation model so far; at each snapshot mark it is copied to OUT/snapshots/.
   Epochs and validation errors are followed live through Lightning's CSVLogger
   (OUT/train/csv/version_0/metrics.csv). Snapshot clock origin: launch of nequip-train (includes
   data loading, statistics and model build: `preprocess_s`).
4. Kills the training process group at --minutes; samples its resident memory once a second.
5. Compiles every snapshot for ASE as NequIP's docs prescribe: `nequip-compile CKPT OUT.nequip.pt2
   --device cpu --mode aotinductor --target ase` (TorchScript mode is refused with torch >= 2.10),
   timing each compile (`compile_s`), and evaluates it with NequIPCalculator.from_compiled_model
   on every test file. A compile takes about 3 min here, so by default (--compile last) only the
   last snapshot is compiled; earlier ones are evaluated from the checkpoint in eager mode
   (NequIPCalculator._from_saved_model: same weights; the compiled/eager agreement of the last
   snapshot is recorded in `compiled_vs_eager`).
6. Times the ASE calculator in a fresh subprocess (ms per energy+forces call on the first test
   structure; `peak_rss_mb_infer` = that subprocess's ru_maxrss): the compiled model
   (`ms_per_call`) and the eager checkpoint (`ms_per_call_eager`).
7. Writes OUT/results.json.
"""
from __future__ import annotations

import csv
import os
import shlex
import shutil
import subprocess
import sys
import time

import peer_common as pc

log = pc.Logger("nequip_run")
MONITOR = "val0_epoch/weighted_sum"
# model and training settings a user would pick for a small molecule on CPU (tutorial.yaml values;
# r_max as MACE; no torch.compile during training: CPU)
NEQUIP_MODEL = {"r_max": 5.0, "num_layers": 4, "l_max": 1, "parity": True, "num_features": 32,
                "num_bessels": 8, "bessel_trainable": False, "polynomial_cutoff_p": 6,
                "radial_mlp_depth": 2, "radial_mlp_width": 64, "model_dtype": "float32"}
NEQUIP_TRAIN = {"batch_size": 5, "val_batch_size": 10, "valid_fraction": 0.05, "lr": 0.01,
                "optimizer": "Adam", "ema_decay": 0.999,
                "loss": "EnergyForceLoss per_atom_energy, coeffs energy 1 : forces 1",
                "lr_scheduler": "ReduceLROnPlateau(factor 0.6, patience 5, threshold 0.2, min_lr 1e-6) on "
                                + MONITOR,
                "monitor": MONITOR + " = total_energy_mae + forces_mae (tutorial.yaml)",
                "early_stopping": "none (the wall-clock budget stops training)",
                "per_type_energy_shifts": "isolated-atom energies E0 (fixed)",
                "per_type_energy_scales": "per_type_forces_rms of the training split (fixed)",
                "avg_num_neighbors": "num_neighbors_mean of the training split",
                "zbl": False}


def make_calculator(model_path: str):
    from nequip.integrations.ase import NequIPCalculator

    if model_path.endswith(".nequip.pt2"):
        return NequIPCalculator.from_compiled_model(model_path, device="cpu",
                                                    chemical_species_to_atom_type_map=True)
    # eager: checkpoint / package loaded directly (not the documented route, but the same model)
    return NequIPCalculator._from_saved_model(model_path, device="cpu",
                                              chemical_species_to_atom_type_map=True)


def symbols_of(e0s: dict) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in sorted(e0s)]


def nequip_config(args, train_file: str, e0s: dict, max_epochs: int) -> dict:
    syms = symbols_of(e0s)
    dl = {"_target_": "torch.utils.data.DataLoader", "num_workers": 0}
    model = {"_target_": "nequip.model.NequIPGNNModel", "seed": args.seed,
             "type_names": "${model_type_names}",
             **{k: v for k, v in NEQUIP_MODEL.items() if k != "r_max"},
             "r_max": "${cutoff_radius}",
             "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
             "per_type_energy_scales": "${training_data_stats:per_type_forces_rms}",
             "per_type_energy_shifts": {s: float(e0s[z]) for s, z in zip(syms, sorted(e0s))},
             "per_type_energy_scales_trainable": False,
             "per_type_energy_shifts_trainable": False}
    if args.zbl:
        model["pair_potential"] = {"_target_": "nequip.nn.pair_potential.ZBL", "units": "metal",
                                   "chemical_species": "${chemical_symbols}"}
    vf = NEQUIP_TRAIN["valid_fraction"]
    return {
        "run": ["train"],
        "cutoff_radius": NEQUIP_MODEL["r_max"],
        "chemical_symbols": syms,
        "model_type_names": "${chemical_symbols}",
        "monitored_metric": MONITOR,
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": args.seed,
            "split_dataset": {"file_path": train_file, "train": round(1 - vf, 6), "val": vf},
            "transforms": [
                {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                 "model_type_names": "${model_type_names}",
                 "chemical_species_to_atom_type_map": "${list_to_identity_dict:${chemical_symbols}}"},
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
            ],
            "train_dataloader": {**dl, "batch_size": NEQUIP_TRAIN["batch_size"], "shuffle": True},
            "val_dataloader": {**dl, "batch_size": NEQUIP_TRAIN["val_batch_size"]},
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager",
                              "dataloader_kwargs": {"batch_size": 10},
                              "type_names": "${model_type_names}"},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": max_epochs,
            "check_val_every_n_epoch": 1,
            "log_every_n_steps": 20,
            "enable_progress_bar": False,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                       "save_dir": "${hydra:runtime.output_dir}", "name": "csv", "version": 0,
                       "flush_logs_every_n_steps": 1},
            "callbacks": [
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "monitor": "${monitored_metric}", "dirpath": "${hydra:runtime.output_dir}",
                 "filename": "best", "save_top_k": 1, "save_last": False},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": NEQUIP_TRAIN["ema_decay"],
            "loss": {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
                     "coeffs": {"total_energy": 1.0, "forces": 1.0}},
            "val_metrics": {"_target_": "nequip.train.EnergyForceMetrics",
                            "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0,
                                       "per_atom_energy_rmse": None, "forces_rmse": None}},
            "optimizer": {"_target_": "torch.optim.Adam", "lr": NEQUIP_TRAIN["lr"]},
            "lr_scheduler": {
                "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                              "factor": 0.6, "patience": 5, "threshold": 0.2, "min_lr": 1e-6},
                "monitor": "${monitored_metric}", "interval": "epoch", "frequency": 1},
            "model": model,
        },
        "global_options": {"allow_tf32": False},
    }


def nequip_exe(name: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return exe if os.path.exists(exe) else (shutil.which(name) or name)


class CsvFollower:
    """Follows Lightning's metrics.csv: one row per validation epoch with the val0_epoch/* columns."""

    def __init__(self, path: str, print_every: int):
        self.path, self.print_every = path, print_every
        self.size = -1
        self.curve = []  # epoch, t_s, per-atom E RMSE (meV/atom), F RMSE (meV/A), weighted sum
        self.seen = set()

    def poll(self, t: float) -> None:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        if size == self.size:
            return
        self.size = size
        try:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error):
            return
        for row in rows:
            val = row.get(MONITOR, "")
            if not val:
                continue
            ep = int(float(row["epoch"]))
            if ep in self.seen:
                continue
            self.seen.add(ep)

            def num(k):
                v = row.get(k, "")
                return float(v) if v not in ("", None) else None

            e = num("val0_epoch/per_atom_energy_rmse")
            fr = num("val0_epoch/forces_rmse")
            rec = {"epoch": ep, "t_s": round(t, 2),
                   "rmse_e_meV_atom": None if e is None else e * 1e3,
                   "rmse_f_meV_A": None if fr is None else fr * 1e3,
                   "weighted_sum": float(val)}
            self.curve.append(rec)
            if ep % self.print_every == 0:
                log(f"epoch {ep:4d} done at {t:7.1f} s  valid RMSE_E={rec['rmse_e_meV_atom']:.2f} meV/atom "
                    f"RMSE_F={rec['rmse_f_meV_A']:.1f} meV/A")

    def epochs_done(self) -> int:
        return max(self.seen) + 1 if self.seen else 0


def grab_checkpoint(src: str, dst: str, tries: int = 40):
    """Copy best.ckpt and check it loads (Lightning rewrites it in place on improvement)."""
    import torch

    for _ in range(tries):
        if not os.path.exists(src):
            return None
        try:
            shutil.copyfile(src, dst)
            ck = torch.load(dst, map_location="cpu", weights_only=False)
            return int(ck["epoch"])
        except Exception:  # noqa: BLE001  (half written) -> retry
            time.sleep(0.25)
    return None


def train(args, cmd, out_dir, marks):
    train_dir = os.path.join(out_dir, "train")
    snap_dir = os.path.join(out_dir, "snapshots")
    os.makedirs(snap_dir, exist_ok=True)
    follower = CsvFollower(os.path.join(train_dir, "csv", "version_0", "metrics.csv"), args.print_every)
    state = {"t_train_start": None}

    def on_line(line, t):
        if state["t_train_start"] is None and "TRAIN RUN START" in line:
            state["t_train_start"] = round(t, 2)
            log(f"preprocessing done after {t:.1f} s; training started")

    def take_snapshot(key, minutes):
        dst = os.path.join(snap_dir, f"snap_{key}min.ckpt")
        ep = grab_checkpoint(os.path.join(train_dir, "best.ckpt"), dst)
        return {"checkpoint_epoch": ep, "path": dst if ep is not None else None}

    res = pc.run_budgeted(cmd, pc.thread_env(args.threads), os.path.join(out_dir, "train_stdout.log"),
                          args.minutes * 60.0, marks, take_snapshot, on_line=on_line,
                          poll=follower.poll, epochs_done=follower.epochs_done, log=log,
                          name="nequip-train")
    res["preprocess_s"] = state["t_train_start"]
    res["epochs_done"] = follower.epochs_done()
    res["valid_curve"] = follower.curve
    return res


def compile_model(args, ckpt: str, out_path: str, log_path: str) -> float:
    cmd = [nequip_exe("nequip-compile"), ckpt, out_path, "--device", "cpu", "--mode", "aotinductor",
           "--target", "ase"]
    t = time.monotonic()
    with open(log_path, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True,
                       env=pc.thread_env(args.threads, {"TORCHINDUCTOR_COMPILE_THREADS": "1"}))
    return round(time.monotonic() - t, 2)


def main() -> None:
    p = pc.make_parser(__doc__)
    p.add_argument("--compile", choices=["all", "last", "none"], default="last",
                   help="which snapshots to nequip-compile (--mode aotinductor --target ase, NequIP's "
                        "documented route for ASE; about 3 min each here) and evaluate compiled; the "
                        "others are evaluated from the checkpoint in eager mode (same weights). The "
                        "timed model is the last snapshot's, compiled unless --compile none")
    p.add_argument("--zbl", action="store_true", help="add NequIP's ZBL pair potential (off by default, "
                   "as MACE runs without a repulsion prior here)")
    args = p.parse_args()
    if args._time_model:
        pc.timing_child(args, make_calculator)
        return
    marks = pc.check_args(p, args)
    pc.set_threads(args.threads)
    import importlib.metadata as md

    import ase
    import torch
    import yaml

    out_dir = os.path.abspath(args.out)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(out_dir, exist_ok=True)

    # 1. data
    data = pc.prepare_data(args, data_dir, log, None, None)
    e0s, tests = data["e0s"], data["tests"]
    train_file = os.path.join(data_dir, "train.xyz")

    # 2. config
    cfg_dir = os.path.join(out_dir, "config")
    os.makedirs(cfg_dir, exist_ok=True)
    config = nequip_config(args, train_file, e0s, args.max_num_epochs)
    with open(os.path.join(cfg_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    train_dir = os.path.join(out_dir, "train")
    cmd = [nequip_exe("nequip-train"), "-cp", cfg_dir, "-cn", "config", f"hydra.run.dir={train_dir}"]
    cmd_str = f"OMP_NUM_THREADS={args.threads} " + " ".join(shlex.quote(c) for c in cmd)

    # 3-4. train under the budget
    tr = pc.train_or_reuse(args, out_dir, train_dir, cmd_str,
                           lambda: train(args, cmd, out_dir, marks), log)

    # 5. compile + evaluate
    keys = [k for k, snap in tr["snapshots"].items() if snap["path"] is not None]
    to_compile = {"all": keys, "last": keys[-1:], "none": []}[args.compile]
    results, compile_s, calc_kind = {}, {}, {}
    compiled_last = eager_last = None
    for key, snap in tr["snapshots"].items():
        if snap["path"] is None:
            log(f"snapshot {key} min: no checkpoint yet (training had not finished an epoch)")
            results[key] = None
            continue
        model_path, calc_kind[key] = snap["path"], "eager (checkpoint)"
        if key in to_compile:
            pt2 = snap["path"][: -len(".ckpt")] + ".nequip.pt2"
            try:
                log(f"snapshot {key} min: nequip-compile --mode aotinductor --target ase ...")
                compile_s[key] = compile_model(args, snap["path"], pt2, pt2 + ".log")
                log(f"snapshot {key} min: compiled in {compile_s[key]:.1f} s")
                model_path, calc_kind[key] = pt2, "compiled (aotinductor, target ase)"
            except subprocess.CalledProcessError:
                log(f"snapshot {key} min: nequip-compile FAILED (see {pt2}.log); evaluating the eager model")
                calc_kind[key] = "eager (compile failed)"
        snap["model_path"] = model_path
        calc = make_calculator(model_path)
        results[key] = {}
        for stem, frames in tests.items():
            results[key][stem] = r = pc.evaluate(calc, frames)
            log(f"snapshot {key} min (epoch {snap['checkpoint_epoch']}) {stem}: {pc.metrics_line(r)}")
        eager_last = snap["path"]
        compiled_last = model_path if model_path.endswith(".pt2") else None
        last_calc = calc

    # compiled and eager model must agree (same weights); checked on the first test frames
    agreement = None
    if compiled_last is not None:
        import numpy as np

        eager = make_calculator(eager_last)
        de = df = 0.0
        for fr in next(iter(tests.values()))[:5]:
            a, b = fr["atoms"].copy(), fr["atoms"].copy()
            a.calc, b.calc = last_calc, eager
            de = max(de, abs(a.get_potential_energy() - b.get_potential_energy()))
            df = max(df, float(np.abs(a.get_forces() - b.get_forces()).max()))
        agreement = {"max_abs_dE_eV": de, "max_abs_dF_eV_A": df, "frames": 5}
        log(f"compiled vs eager (last snapshot, 5 frames): max |dE| {de:.2e} eV, max |dF| {df:.2e} eV/A")

    # 6. calculator timing in fresh processes (last snapshot's model): compiled (documented route), eager
    timing, timing_eager = {}, {}
    if eager_last is not None:
        script = os.path.abspath(__file__)
        timing_eager = pc.measure_inference(script, eager_last, data["timing_path"], args.threads,
                                            args.timing_calls, os.path.join(out_dir, "timing_eager_stderr.log"))
        log(f"ASE NequIPCalculator (eager): {timing_eager['ms_per_call']:.2f} ms per energy+forces call "
            f"({timing_eager['n_atoms']} atoms, {args.threads} threads), "
            f"peak RSS {timing_eager['peak_rss_mb_infer']} MB")
        timing = timing_eager
        if compiled_last is not None:
            timing = pc.measure_inference(script, compiled_last, data["timing_path"], args.threads,
                                          args.timing_calls, os.path.join(out_dir, "timing_stderr.log"))
            log(f"ASE NequIPCalculator (compiled): {timing['ms_per_call']:.2f} ms per energy+forces call "
                f"({timing['n_atoms']} atoms, {args.threads} threads), peak RSS {timing['peak_rss_mb_infer']} MB")
    timed_model = compiled_last or eager_last

    # 7. results
    res = {
        "peer": "nequip",
        "nequip_version": md.version("nequip"),
        "torch_version": torch.__version__,
        "e3nn_version": md.version("e3nn"),
        "lightning_version": md.version("lightning"),
        "ase_version": ase.__version__,
        **pc.run_fields(args, tr),
        "hyperparameters": {"model": "NequIPGNNModel", **NEQUIP_MODEL, **NEQUIP_TRAIN, "zbl": args.zbl},
        "snapshot_clock": "seconds since launch of nequip-train (includes data loading, statistics, model build)",
        "snapshot_selection": f"Lightning ModelCheckpoint best.ckpt (monitor {MONITOR}, EMA weights) "
                              "= best validation so far",
        **pc.training_fields(tr, results),
        "calculator": calc_kind,
        "compile_s": compile_s,
        "compiled_vs_eager": agreement,
        "ms_per_call": timing.get("ms_per_call"),
        "ms_per_call_eager": timing_eager.get("ms_per_call"),
        "peak_rss_mb_infer_eager": timing_eager.get("peak_rss_mb_infer"),
        "ms_per_call_note": pc.timing_note("ASE NequIPCalculator energy+forces", timing, data, args)
                            + f"; model: {os.path.basename(str(timed_model))}",
        **pc.closing_fields(timing, tr, data, cmd_str),
        "config": config,
        "valid_curve": tr["valid_curve"],
    }
    pc.write_results(out_dir, res, log)


if __name__ == "__main__":
    main()
