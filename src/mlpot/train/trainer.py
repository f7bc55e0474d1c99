"""The training loop: AdamW, plateau learning-rate schedule, EMA weights, early stopping,
an atomic checkpoint after every epoch, resume after a kill."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mlpot.config import TrainingConfig, default_learning_rate, default_weight_decay
from mlpot.data.batch import GraphCache, pick_device, to_device
from mlpot.data.lazy import is_lazy
from mlpot.data.records import Frame
from mlpot.errors import ModelFileError
from mlpot.files import atomic_folder, write_bytes_atomic, write_text_atomic
from mlpot.potential import Potential
from mlpot.progress import bar as tqdm, interactive, log_line
from mlpot.serialize import check_finite, save
from mlpot.train.distributed import context, mean_over_processes, shard
from mlpot.train.feature_cache import FeatureCache, cache_bytes, predict_cached
from mlpot.train.loss import EnergyForceLoss
from mlpot.threads import threads_for

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"


def save_checkpoint_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; a plain
    torch.save(state, buffer)  # write reports it as OSError naming the file
    write_bytes_atomic(path, buffer.getvalue())


def read_checkpoint(path: Path, device: torch.device) -> dict:
    """The state dict in checkpoint ``path``, unpickled weights-only (tensors, numbers,
    strings and containers; never code). ModelFileError naming the file if it is damaged."""
    try:
        state = torch.load(path, weights_only=True, map_location=device, mmap=True)
    except Exception as error:  # noqa: BLE001 (zip, unpickling and storage errors alike)
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ModelFileError(f"{path}: not a readable mlpot checkpoint ({type(error).__name__}"
                             f"{': ' + message if message else ''})") from error
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return state


def training_device(name: str) -> torch.device:
    """torch device for ``training.device``: "auto" picks CUDA when a GPU is present."""
    return pick_device(name, "training.device")


class CachedPredictor(torch.nn.Module):
    """A training step's prediction from cached descriptors (a module, so that DDP can wrap
    it; see :func:`mlpot.train.feature_cache.predict_cached`)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return predict_cached(self.model, batch)


class Trainer:
    """Fits a potential's parameters to energies and forces of ``train``; selects on ``valid``.

    Writes into ``out``: ``checkpoint.pt`` (resume state), ``model/`` (best EMA weights on
    validation), ``log.csv`` (one row per epoch) and ``snapshots/`` when asked.
    ``feature_cache``: a descriptor cache of the same ``train`` frames made for a potential
    with the same descriptor and E0 (an ensemble's earlier member), used instead of a new one.
    """

    def __init__(self, potential: Potential, train: Sequence[Frame], valid: Sequence[Frame],
                 config: TrainingConfig, out: Path, seed: int = 0, metadata: dict | None = None,
                 progress: bool = True, feature_cache: FeatureCache | None = None):
        self.device = training_device(config.device)
        self.ctx = context(self.device)
        if self.device.type == "cuda" and self.ctx.distributed:
            self.device = torch.device("cuda", self.ctx.local_rank)
        self.potential = potential.to(self.device)
        self.config = config
        self.out = Path(out)
        self.metadata = metadata or {}
        self.progress = progress and self.ctx.is_main
        self.dtype = getattr(torch, config.dtype)
        cutoff, angular = potential.model.cutoff, potential.model.angular_cutoff
        self.train_graphs = GraphCache(train, cutoff, angular)
        self.feature_cache = None
        self.setup_seconds = 0.0  # counted into the time budget once (not again on resume)
        if (feature_cache is not None and feature_cache.frames is train
                and feature_cache.dtype == self.dtype and self._use_feature_cache(train)):
            self.feature_cache = feature_cache  # an earlier member's, of these frames
        elif self._use_feature_cache(train):
            began = time.monotonic()
            with threads_for(FeatureCache.atoms_per_call(train), config.threads):
                self.feature_cache = FeatureCache(potential, train, dtype=self.dtype,
                                                  progress=self.progress)
            self.setup_seconds = time.monotonic() - began
        self.valid_graphs = GraphCache(valid, cutoff, angular)
        self.loss = EnergyForceLoss(config.sigma_energy, config.sigma_force, config.sigma_stress,
                                    config.sigma_dipole, config.sigma_charge,
                                    config.sigma_charge_excess, config.sigma_volume,
                                    config.sigma_charge_eeq)
        kind = getattr(potential.model, "kind", "")
        self.learning_rate = config.learning_rate or default_learning_rate(kind)
        weight_decay = (default_weight_decay(kind) if config.weight_decay is None
                        else config.weight_decay)
        self.optimizer = torch.optim.AdamW(potential.parameters(), lr=self.learning_rate,
                                           weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate)
        self.forward = self._forward_module()
        self.ema = AveragedModel(potential, multi_avg_fn=get_ema_multi_avg_fn(
            config.ema_decay), use_buffers=True) if config.ema_decay > 0 else None
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.epoch_fraction = 0.0  # share of the current epoch's batches done
        self.elapsed = 0.0  # training seconds, summed over resumes
        self.best_loss = math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.snapshots_done: list[float] = []

    def _use_feature_cache(self, train: Sequence[Frame]) -> bool:
        """Cache descriptors and derivatives when the model allows it, no stress is trained,
        the frames are in memory (not on disk) and the cache fits in ``cache_max_gb`` (see
        :mod:`mlpot.train.feature_cache`)."""
        model = self.potential.model
        if is_lazy(train):  # on-disk data: the cache would hold all of it in memory
            return False
        if (not self.config.cache_descriptors or not hasattr(model, "atomic_energies")
                or self.device.type != "cpu" or self.potential.variance_head is not None
                or self.potential.physics_terms):
            return False
        if any(f.stress is not None for f in train):
            return False
        need = cache_bytes(train, model.descriptor.n_features, self.dtype)
        return need <= self.config.cache_max_gb * 2**30

    def _forward_module(self) -> torch.nn.Module:
        """What a training step calls: the potential (or, with the descriptor cache, the
        cached predictor), wrapped in DistributedDataParallel under torchrun."""
        module = (CachedPredictor(self.potential.model) if self.feature_cache is not None
                  else self.potential)
        if not self.ctx.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # the variance head waits for its NLL phase; the formal charge networks get no
            # gradient from batches of multi-fragment structures alone
            find_unused_parameters=(self.potential.variance_head is not None
                                    or self.potential.long_range is not None))

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.potential.state_dict(),
                "ema": self.ema.state_dict() if self.ema else {},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "epoch": self.epoch, "elapsed": self.elapsed, "best_loss": self.best_loss,
                "bad_epochs": self.bad_epochs, "history": json.dumps(self.history),
                "snapshots_done": list(self.snapshots_done)}

    def load_state(self, state: dict) -> None:
        self.potential.load_state_dict(state["model"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.epoch, self.elapsed = int(state["epoch"]), float(state["elapsed"])
        self.best_loss, self.bad_epochs = float(state["best_loss"]), int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        self.snapshots_done = list(state["snapshots_done"])

    def checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint_atomic(self.state(), self.out / CHECKPOINT)

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` if present (weights-only unpickling); True if resumed."""
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        state = read_checkpoint(path, self.device)
        try:
            check_finite(path, {f"model.{k}": v for k, v in state["model"].items()})
            self.load_state(state)
        except ModelFileError:
            raise
        except KeyError as error:
            raise ModelFileError(f"{path}: field {error} missing") from error
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise ModelFileError(f"{path}: does not fit this run's model and optimiser "
                                 f"({str(error).strip().splitlines()[0][:300]})") from error
        return True

    @property
    def evaluated(self) -> Potential:
        """The weights used for validation and saving (the EMA average when enabled)."""
        return self.ema.module if self.ema else self.potential

    # -- loop ----------------------------------------------------------------------------
    def _seconds(self, started: float) -> float:
        """Training seconds so far (summed over resumes); under torchrun the processes'
        mean, so that time-based decisions (budget, cosine rate, NLL phase) agree."""
        return mean_over_processes(self.elapsed + time.monotonic() - started, self.ctx,
                                   self.device)

    def _out_of_time(self, started: float) -> bool:
        limit = self.config.max_minutes
        return limit is not None and self._seconds(started) >= limit * 60

    def train_epoch(self, started: float) -> dict:
        self.potential.train()
        order = torch.randperm(len(self.train_graphs), generator=self.generator).tolist()
        size = self.config.batch_size
        total, count = 0.0, 0
        for start in range(0, len(order), size):
            self.epoch_fraction = start / len(order)
            if self.config.lr_schedule == "cosine":
                self._set_cosine_rate(started)
            if len(order[start:start + size]) < self.ctx.world_size:
                continue  # a last global batch too small to give every process a structure
            index = shard(order[start:start + size], self.ctx)
            if self.feature_cache is not None:
                batch = self.feature_cache.batch(index)
                prediction = self.forward(batch)
            else:
                batch = to_device(self.train_graphs.batch(index, dtype=self.dtype), self.device)
                prediction = self.forward(batch, forces=True, create_graph=True)
            loss, _ = self.loss(prediction, batch, nll=self._nll_phase(started),
                                beta=self.config.beta_nll)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.potential.parameters(), self.config.grad_clip)
            self.optimizer.step()
            if self.ema:
                self.ema.update_parameters(self.potential)
            total += float(loss.detach()) * len(batch["n_atoms"])
            count += len(batch["n_atoms"])
            self._take_snapshots(started)
            if self._out_of_time(started):
                break
        self.epoch_fraction = 0.0
        return {"train_loss": mean_over_processes(total / max(count, 1), self.ctx, self.device)}

    def _nll_phase(self, started: float) -> bool:
        """Whether the variance head trains (NLL): after ``nll_warmup`` of the budget."""
        if self.potential.variance_head is None:
            return False
        return self._budget_done(started) >= self.config.nll_warmup

    def _budget_done(self, started: float) -> float:
        """Fraction of the budget spent: training time over ``max_minutes`` or, without a time
        budget, epochs (counting the current one's batches) over ``max_epochs``."""
        c = self.config
        if c.max_minutes:
            return self._seconds(started) / (c.max_minutes * 60)
        return (self.epoch + self.epoch_fraction) / c.max_epochs

    def _set_cosine_rate(self, started: float) -> None:
        """lr = lr_min + ½(lr_0 − lr_min)(1 + cos(π f)), f the fraction of the budget spent
        (training time, or epochs without a time budget)."""
        c = self.config
        fraction = min(self._budget_done(started), 1.0)
        rate = c.min_learning_rate + 0.5 * (self.learning_rate - c.min_learning_rate) * (
            1 + math.cos(math.pi * fraction))
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def validate(self) -> dict:
        model = self.evaluated
        model.eval()
        sums = {"valid_loss": 0.0, "energy_sq": 0.0, "force_sq": 0.0}
        n_struct, n_force = 0, 0
        for start in range(0, len(self.valid_graphs), 32):
            index = range(start, min(start + 32, len(self.valid_graphs)))
            batch = to_device(self.valid_graphs.batch(index, dtype=self.dtype), self.device)
            prediction = model(batch, forces=True, create_graph=False)
            loss, _ = self.loss(prediction, batch)
            n = len(index)
            sums["valid_loss"] += float(loss.detach()) * n
            per_atom = (prediction["energy"] - batch["energy"]).detach() / batch["n_atoms"]
            sums["energy_sq"] += float((per_atom**2).sum())
            if "forces" in batch:
                has = batch["has_forces"][batch["batch"]]
                diff = (prediction["forces"] - batch["forces"]).detach()[has]
                sums["force_sq"] += float((diff**2).sum())
                n_force += diff.numel()
            n_struct += n
        return {"valid_loss": sums["valid_loss"] / max(n_struct, 1),
                "valid_energy_rmse": 1000 * math.sqrt(sums["energy_sq"] / max(n_struct, 1)),
                "valid_force_rmse": (1000 * math.sqrt(sums["force_sq"] / n_force)
                                     if n_force else None)}

    def _take_snapshots(self, started: float) -> None:
        """Copy the best model so far to ``snapshots/model_<M>min`` once M minutes have passed
        (what a run stopped at M minutes would have returned)."""
        if not self.ctx.is_main:
            return
        minutes = (self.elapsed + time.monotonic() - started) / 60
        for mark in self.config.snapshot_minutes:
            if mark not in self.snapshots_done and minutes >= mark and (self.out / "model").exists():
                target = self.out / "snapshots" / f"model_{mark:g}min"
                with atomic_folder(target) as tmp:
                    shutil.copytree(self.out / "model", tmp, dirs_exist_ok=True)
                self.snapshots_done.append(mark)

    def run(self, resume: bool = False) -> dict:
        """Train until the time budget, max_epochs or early stopping; returns a summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        if not resumed:  # a resumed run's checkpoint holds the first set-up's time already
            self.elapsed += self.setup_seconds
        if self.setup_seconds and self.config.max_minutes and self.progress:
            print(f"descriptor cache: {self.setup_seconds:.1f} s ("
                  f"{self.setup_seconds / 60 / self.config.max_minutes:.0%} of the "
                  f"{self.config.max_minutes:g}-minute budget"
                  + (", not charged again on resume)" if resumed else ")"), flush=True)
        started = time.monotonic()
        limit = self.config.max_minutes
        # with a time budget the bar counts training minutes, else epochs
        bar = (tqdm(total=limit, initial=round(self.elapsed / 60, 2), desc="train", unit="min",
                    bar_format="{l_bar}{bar}| {n:.1f}/{total:g} min {postfix}", mininterval=1.0,
                    disable=not self.progress)
               if limit else tqdm(total=self.config.max_epochs, initial=self.epoch, desc="train",
                                  unit="epoch", mininterval=1.0, disable=not self.progress))
        reason = "max_epochs"
        while self.epoch < self.config.max_epochs:
            if self.bad_epochs >= self.config.patience:
                reason = "early stopping"
                break
            if self._out_of_time(started) and self.history:  # at least one (part) epoch
                reason = "time budget"
                break
            row = {"epoch": self.epoch + 1, **self.train_epoch(started), **self.validate()}
            self.epoch += 1
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["minutes"] = (self.elapsed + time.monotonic() - started) / 60
            if self.config.lr_schedule == "plateau":
                self.scheduler.step(row["valid_loss"])
            if row["valid_loss"] < self.best_loss:
                self.best_loss, self.bad_epochs = row["valid_loss"], 0
                if self.ctx.is_main:
                    save(self.evaluated, self.out / "model",
                         {**self.metadata, "epoch": self.epoch, "valid": row})
            else:
                self.bad_epochs += 1
            self.history.append(row)
            bar.update(min(row["minutes"], limit) - bar.n if limit else 1)
            status = (f"epoch {self.epoch}, valid E {row['valid_energy_rmse']:.2f} meV/atom, "
                      f"F {row['valid_force_rmse'] or float('nan'):.1f} meV/Å, "
                      f"lr {row['lr']:.1e}")
            bar.set_postfix_str(status)
            if self.progress and not interactive():  # a log: one line per epoch, no bar
                budget = (f"{row['minutes']:.1f}/{limit:g} min" if limit
                          else f"{self.epoch}/{self.config.max_epochs} epochs")
                log_line(f"train: {status} ({budget})")
            self._write_log()
            self.elapsed += time.monotonic() - started
            started = time.monotonic()
            self.checkpoint()
        bar.close()
        self.elapsed += time.monotonic() - started
        self.checkpoint()
        return {"epochs": self.epoch, "minutes": self.elapsed / 60, "stopped_by": reason,
                "best_valid_loss": self.best_loss, "resumed": resumed,
                "setup_minutes": self.setup_seconds / 60}

    def _write_log(self) -> None:
        if not self.history or not self.ctx.is_main:
            return
        fields = list(self.history[0])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        write_text_atomic(self.out / LOG, buffer.getvalue())
