"""Typed run configuration (YAML), strict: unknown keys are errors.

A config file mirrors :class:`RunConfig`::

    data:
      train: acac/train_300K.xyz
      isolated_atoms: acac/isolated_atoms.xyz   # optional; else E0 by least squares
      test: [acac/test_MD_300K.xyz]
    model:
      kind: bpnn            # or linear, schnet, painn, equivariant
      size: medium          # or small, large: sets the architecture (SIZE_PRESETS)
      cutoff: 5.0           # Å
    training:
      max_minutes: 10
    seed: 0
    out: runs/acac
Relative paths in a config file are taken relative to the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from mlpot.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    train: str  # extxyz / ASE db / rMD17 npz with energies (and forces)
    valid: str | None = None  # separate validation file; else valid_fraction of train
    test: list[str] = []  # evaluated after training, reported in metrics.json
    isolated_atoms: str | None = None  # single-atom frames giving E0
    energy_key: str = "energy"
    forces_key: str = "forces"
    valid_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_train: int | None = None  # use at most this many training frames (after the split)
    # ASE databases: which rows (ase.db query, e.g. "level=xtb/gfn2-xtb" for `mlpot label`'s
    # databases that hold several levels); rows stored as failed are always skipped
    db_select: str | None = None
    # Δ-learning: train on (this database's labels) − (labels of this baseline level of the
    # same structures, e.g. "xtb/gfn2-xtb"); train, valid and test must be label databases
    delta_baseline: str | None = None


# Sizes of every model kind: what a user gets with ``model.size`` (default medium) for each
# setting left out of the config. medium is what the benchmarks (benchmarks/RESULTS.md) use.
SIZE_PRESETS = {
    "bpnn": {"small": dict(hidden=[32, 32], n_radial=12, n_angular_eta=2),
             "medium": dict(hidden=[64, 64], n_radial=16, n_angular_eta=3),
             "large": dict(hidden=[128, 128, 128], n_radial=20, n_angular_eta=4)},
    "schnet": {"small": dict(n_features=32, n_interactions=2, n_rbf=16),
               "medium": dict(n_features=64, n_interactions=3, n_rbf=20),
               "large": dict(n_features=128, n_interactions=4, n_rbf=24)},
    "painn": {"small": dict(n_features=32, n_interactions=2, n_rbf=16),
              "medium": dict(n_features=64, n_interactions=3, n_rbf=20),
              "large": dict(n_features=128, n_interactions=4, n_rbf=24)},
    "equivariant": {
        "small": dict(n_features=32, n_interactions=2, n_rbf=8, l_max=2, hidden_l=0,
                      correlation=3),
        "medium": dict(n_features=32, n_interactions=2, n_rbf=8, l_max=2, hidden_l=1,
                       correlation=3),
        "large": dict(n_features=64, n_interactions=2, n_rbf=8, l_max=3, hidden_l=1,
                      correlation=3)},
}
SIZE_PRESETS["linear"] = SIZE_PRESETS["bpnn"]  # same descriptors; hidden is unused


class ModelConfig(Strict):
    kind: Literal["bpnn", "linear", "schnet", "painn", "equivariant"] = "bpnn"
    size: Literal["small", "medium", "large"] = "medium"  # fills the unset settings below
    cutoff: float = Field(5.0, gt=0)  # Å (message-passing models: of each message)
    angular_cutoff: float | None = None  # Å, defaults to cutoff (bpnn, linear)
    cutoff_function: Literal["cosine", "polynomial"] = "cosine"
    angular_kind: Literal["G4", "G5"] = "G4"
    n_radial: int | None = Field(None, ge=1)  # G2 Gaussians per neighbour element
    n_angular_eta: int | None = Field(None, ge=0)  # G4 radial widths per element pair
    zetas: list[float] = [1.0, 2.0, 4.0, 16.0]
    hidden: list[int] | None = None  # bpnn hidden layer widths
    activation: Literal["silu", "tanh", "celu", "softplus", "gelu"] = "silu"
    # per-element baseline b_Z · n_i of every network model: n = 1 − exp(−c) ("saturating")
    # or the coordination number c itself ("linear"); see mlpot.descriptors.cutoff. Default:
    # saturating for equivariant (far faster start), linear for the others (bpnn: better 600 K
    # transfer); docs/choices.md
    baseline: Literal["saturating", "linear"] | None = None
    ridge: float | None = None  # linear: fixed ridge strength; None picks it on validation
    n_features: int | None = Field(None, ge=1)  # message passing: feature width / channels
    n_interactions: int | None = Field(None, ge=1)  # message passes T (reach T × cutoff, Å)
    n_rbf: int | None = Field(None, ge=2)  # radial basis per distance: schnet Gaussians on
    #   [0, cutoff] Å, painn sin(kπr/cutoff)/r, equivariant √(2/cutoff) sin(kπr/cutoff)/r
    l_max: int | None = Field(None, ge=0, le=4)  # equivariant: spherical harmonics order
    hidden_l: int | None = Field(None, ge=0, le=4)  # equivariant: order of passed features
    correlation: int | None = Field(None, ge=1, le=4)  # equivariant: product basis order ν
    # long range added to the local model (mlpot.physics): "coulomb" = learned charges
    # (total charge conserved) and their Coulomb energy, switched off inside exclusion_radius;
    # "dispersion" = damped C6/r⁶ with C6 scaled by learned effective volumes; "both"
    long_range: Literal["none", "coulomb", "dispersion", "both"] = "none"
    exclusion_radius: float | None = Field(None, gt=0)  # Å, default the cutoff
    # learned charges sum to integers on each fragment out of the cutoff's reach of the
    # others, blended smoothly below it ("fragments"), to the structure's charge as one group
    # ("structure"), or are not shifted at all ("none"); mlpot.physics.charges
    charge_neutrality: Literal["fragments", "structure", "none"] = "fragments"
    dispersion_cutoff: float = Field(15.0, gt=0)  # Å, pair reach in periodic cells
    # standard DFT-D3(BJ)/D4 added by the calculator to a model of dispersion-free DFT labels
    # of functional xc_functional (mlpot.physics.correction); not part of the fit
    dispersion_correction: Literal["none", "d3", "d4"] = "none"
    xc_functional: str | None = None  # e.g. "pbe", "b3lyp": the labels' functional


    @field_validator("zetas")
    @classmethod
    def _zetas_at_least_one(cls, value):
        if any(z < 1 for z in value):
            raise ValueError("every zeta must be >= 1")
        return value

    @model_validator(mode="after")
    def _one_dispersion(self):
        if self.dispersion_correction != "none" and not self.xc_functional:
            raise ValueError("model.dispersion_correction needs model.xc_functional (the "
                             "functional the labels were computed with)")
        if self.dispersion_correction != "none" and self.long_range in ("dispersion", "both"):
            raise ValueError("model.dispersion_correction adds standard dispersion to a model "
                             "of dispersion-free labels; a learned dispersion term "
                             "(long_range: dispersion/both) learns it from labels that have it: "
                             "choose one")
        return self

    @model_validator(mode="after")
    def _apply_size(self):
        for key, value in SIZE_PRESETS[self.kind][self.size].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.baseline is None:
            self.baseline = "saturating" if self.kind == "equivariant" else "linear"
        return self

    def architecture(self) -> dict:
        """The settings of this kind's size preset, as resolved (explicit values win)."""
        return {key: getattr(self, key) for key in SIZE_PRESETS[self.kind][self.size]}


class TrainingConfig(Strict):
    # wall-clock budget of the whole run, minutes (summed over resumes; an ensemble's members
    # share it); counts descriptor caching, not reading data
    max_minutes: float | None = Field(10.0, gt=0, allow_inf_nan=False)
    max_epochs: int = 100000
    batch_size: int = Field(8, ge=1)
    learning_rate: float | None = Field(None, gt=0)  # default 1e-2 equivariant, else 2e-3
    min_learning_rate: float = 1e-5
    weight_decay: float | None = Field(None, ge=0)  # AdamW's decoupled decay; default 0.01
    #                                                 bpnn, else 0 (default_weight_decay)
    # "plateau": multiply by lr_factor after lr_patience epochs without validation gain;
    # "cosine": cosine decay from learning_rate to min_learning_rate over max_minutes (without
    #   a time budget: over max_epochs, which must then be given);
    # "auto": cosine when max_minutes is set (stable MD on acac, benchmarks/RESULTS.md), else plateau
    lr_schedule: Literal["auto", "plateau", "cosine"] = "auto"
    lr_factor: float = Field(0.5, gt=0, lt=1)  # ReduceLROnPlateau factor
    lr_patience: int = 20  # epochs without validation improvement before lowering the rate
    patience: int = 200  # early stopping: epochs without validation improvement
    ema_decay: float = Field(0.99, ge=0, lt=1)  # 0 disables the moving average
    grad_clip: float | None = 10.0
    sigma_energy: float = Field(0.001, gt=0)  # eV/atom, see mlpot.train.loss
    sigma_force: float = Field(0.03, gt=0)  # eV/Å
    sigma_stress: float = Field(0.001, gt=0)  # eV/Å³
    sigma_dipole: float = Field(0.01, gt=0)  # e·Å (learned charges vs reference dipoles)
    sigma_charge: float = Field(0.02, gt=0)  # e (learned vs reference atomic charges)
    sigma_charge_excess: float = Field(0.02, gt=0)  # e (charge the neutralisation supplies)
    sigma_volume: float = Field(0.1, gt=0)  # log v − log v_D4 of learned dispersion volumes
    sigma_charge_eeq: float = Field(0.1, gt=0)  # e, learned charges around D4's EEQ charges
    dtype: Literal["float32", "float64"] = "float32"
    snapshot_minutes: list[float] = []  # also save the model at these training minutes
    cache_descriptors: bool = True  # bpnn: precompute descriptors and their derivatives
    cache_max_gb: float = Field(4.0, gt=0)  # ... unless that needs more memory than this
    threads: int | None = Field(None, ge=1)  # torch CPU threads (default: OMP_NUM_THREADS,
    #                                        else by the work; see mlpot.threads)
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: cuda when a GPU is present
    ensemble: int = Field(1, ge=1)  # members of a deep ensemble (seeds seed … seed+M−1),
    #             sharing max_minutes in turn; see mlpot.uncertainty.ensemble, mlpot.train.run
    bootstrap: bool = False  # each member trains on a resample (with replacement) of train
    # aleatoric variance head (mlpot.models.variance), trained by Gaussian NLL after a warm-up
    aleatoric: bool = False
    nll_warmup: float = Field(0.25, ge=0, lt=1)  # fraction of the budget (time, else epochs)
    #                                               fitted by the plain loss before NLL starts
    beta_nll: float = Field(0.5, ge=0, le=1)  # β-NLL (Seitzer et al. 2022): 0 plain NLL,
    #                                            1 mean-fit gradients as unweighted squares
    # last-layer (LLPR) epistemic σ of one bpnn model, fitted after training
    # (mlpot.uncertainty.last_layer): force σ from sampled last layers ("heads") or, cheaper
    # and blunter, from each atom's local-energy σ ("local")
    last_layer: Literal["off", "local", "heads"] = "off"
    last_layer_heads: int = Field(16, ge=2)  # sampled last layers for last_layer: heads
    # start from this trained model (or ensemble: member k from its member k) instead of new
    # weights: warm start of active learning, fine-tuning on another level of theory
    init_model: str | None = None


    @model_validator(mode="after")
    def _resolve_schedule(self):
        if self.lr_schedule == "auto":
            self.lr_schedule = "cosine" if self.max_minutes else "plateau"
        if (self.lr_schedule == "cosine" and not self.max_minutes
                and "max_epochs" not in self.model_fields_set):
            raise ValueError("lr_schedule 'cosine' decays over max_minutes or, without a time "
                             "budget, over max_epochs: set one of them")
        return self


class RunConfig(Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    seed: int = 0
    out: str = "runs/mlpot"

    @model_validator(mode="after")
    def _delta_needs_a_level(self):
        if self.data.delta_baseline and not (self.data.db_select or "").startswith("level="):
            raise ValueError("data.delta_baseline needs data.db_select: level=… (the level "
                             "whose difference to the baseline is learned)")
        if self.data.delta_baseline and self.data.isolated_atoms:
            raise ValueError("data.delta_baseline: E0 of a Δ model come from a fit to the "
                             "differences; leave data.isolated_atoms out")
        return self

    @model_validator(mode="after")
    def _ensemble_of_a_closed_form_fit_needs_bootstrap(self):
        if self.model.kind == "linear" and self.training.ensemble > 1 and not self.training.bootstrap:
            raise ValueError("a linear model is fitted in closed form, so its ensemble members "
                             "would be identical: set training.bootstrap: true")
        if self.training.last_layer != "off" and (self.model.kind != "bpnn"
                                                   or self.training.ensemble > 1):
            raise ValueError("training.last_layer is for one bpnn model (its last layer); "
                             "other kinds and ensembles take training.ensemble alone")
        if self.model.kind == "linear" and self.model.long_range != "none":
            raise ValueError("model.long_range needs a trained network, not the closed-form "
                             "linear fit")
        if self.model.kind == "linear" and self.training.init_model:
            raise ValueError("training.init_model: a linear model is refitted in closed form")
        if self.model.kind == "linear" and self.training.aleatoric:
            raise ValueError("training.aleatoric needs a trained network, not the closed-form "
                             "linear fit")
        return self

    @model_validator(mode="after")
    def _learning_rate_for_the_model(self):
        if self.training.learning_rate is None:
            self.training.learning_rate = default_learning_rate(self.model.kind)
        if self.training.weight_decay is None:
            self.training.weight_decay = default_weight_decay(self.model.kind)
        return self


class EngineConfig(Strict):
    """A reference engine of mlpot.label.engines."""

    kind: Literal["pyscf", "xtb", "ase"] = "xtb"
    method: str | None = None  # pyscf: hf, mp2, ccsd, ccsd(t) or a functional; xtb: GFN2-xTB
    basis: str | None = None  # pyscf (default sto-3g)
    forces: Literal["auto", "analytic", "none", "fd"] = "auto"  # pyscf
    calculator: str | None = None  # ase: module:Class
    arguments: dict = {}  # ase: keyword arguments of the calculator
    threads: int = Field(1, ge=1)  # pyscf threads per label

    def build(self):
        from mlpot.label.engines import ASEEngine, PySCFEngine, XTBEngine

        if self.kind == "pyscf":
            return PySCFEngine(self.method or "hf", self.basis or "sto-3g", self.forces,
                               threads=self.threads)
        if self.kind == "xtb":
            return XTBEngine(self.method or "GFN2-xTB")
        if not self.calculator:
            raise ValueError("engine kind 'ase' needs calculator: module:Class")
        return ASEEngine(self.calculator, dict(self.arguments))


class ExploreConfig(Strict):
    """Langevin exploration with the current model (mlpot.active.explore)."""

    trajectories: int = Field(4, ge=1)  # per iteration, each from a random labelled structure
    temperature: float = Field(500.0, gt=0)  # K
    steps: int = Field(400, ge=1)
    dt: float = Field(0.5, gt=0)  # fs
    interval: int = Field(10, ge=1)  # steps between snapshots (candidates)
    friction: float = Field(0.02, gt=0)  # 1/fs
    stop_sigma: float = Field(1.0, gt=0)  # eV/Å: end a trajectory when its force σ passes this
    # unlabelled candidate structures (any ASE format) to score instead of running MD
    pool: str | None = None


class SelectConfig(Strict):
    """Which candidates to label (mlpot.active.select)."""

    force_sigma: float = Field(0.1, gt=0)  # eV/Å: label snapshots whose max epistemic σ exceeds
    max_new: int = Field(10, ge=1)  # labels per iteration
    min_distance: float = Field(0.02, ge=0)  # Å: fingerprint RMS below which two are duplicates
    # "top": most uncertain first; "weighted": random draw with probability ∝ σ;
    # "diverse": greedy σ × distance to the nearest labelled/chosen structure
    strategy: Literal["top", "weighted", "diverse"] = "top"


class LearnConfig(Strict):
    """`mlpot learn`: label, train, explore, select, repeat (mlpot.active.loop)."""

    start: str  # initial structures (any format ASE reads), labelled in iteration 0
    test: str | None = None  # labelled structures on which each iteration is scored
    db: str | None = None  # ASE database of labels (default OUT/labels.db)
    out: str = "runs/learn"
    engine: EngineConfig = EngineConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig(ensemble=3, max_minutes=3.0)  # shared by members
    explore: ExploreConfig = ExploreConfig()
    select: SelectConfig = SelectConfig()
    iterations: int = Field(10, ge=1)
    max_labels: int | None = None  # stop once this many structures are labelled
    target_force_rmse: float | None = None  # meV/Å on test: stop once reached
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    scheduler: str | None = None  # Dask scheduler address (default: a local cluster)
    workers: int | None = None  # local cluster worker processes
    seed: int = 0

    @model_validator(mode="after")
    def _needs_epistemic_force_sigma(self):
        if self.training.ensemble < 2 and self.training.last_layer != "heads":
            raise ValueError("active learning selects by epistemic force σ: set "
                             "training.ensemble ≥ 2 (or last_layer: heads for a bpnn)")
        return self


def load_learn_config(path: str | Path) -> LearnConfig:
    """Read and validate a `mlpot learn` YAML config (paths relative to the file)."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        for key in ("start", "test", "db", "out"):
            if isinstance(raw.get(key), str):
                raw[key] = _relative_to(path.parent, raw[key])
        if isinstance(raw.get("explore"), dict) and isinstance(raw["explore"].get("pool"), str):
            raw["explore"]["pool"] = _relative_to(path.parent, raw["explore"]["pool"])
        return LearnConfig.model_validate(raw)
    except (TypeError, AttributeError) as error:  # e.g. a path that is not a string
        raise ConfigError(f"{path}: {error}") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None


def default_learning_rate(kind: str) -> float:
    """Adam's initial rate when the config gives none. Measured on acac (benchmarks/RESULTS.md):
    the equivariant model learns fastest at 1e-2 (MACE's default too), bpnn at 2e-3."""
    return 1e-2 if kind == "equivariant" else 2e-3


def default_weight_decay(kind: str) -> float:
    """AdamW's weight decay when the config gives none. Measured on acac (benchmarks/RESULTS.md,
    six seeds): 0.01 makes bpnn better in distribution and far steadier out of it (600 K);
    0.05 is too strong; the other kinds are not measured and keep none."""
    return 0.01 if kind == "bpnn" else 0.0


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a YAML config, apply dotted ``overrides`` ({"training.max_minutes": 5}), validate."""
    path = Path(path)
    raw = read_yaml(path)
    data = raw.get("data")
    if isinstance(data, dict):  # paths relative to the config file (others: schema errors)
        for key in ("train", "valid", "isolated_atoms"):
            if isinstance(data.get(key), str):
                data[key] = _relative_to(path.parent, data[key])
        if isinstance(data.get("test"), list):
            data["test"] = [_relative_to(path.parent, p) if isinstance(p, str) else p
                            for p in data["test"]]
    if isinstance(raw.get("out"), str):
        raw["out"] = _relative_to(path.parent, raw["out"])
    return config_from_dict(raw, overrides, source=str(path))


MAX_YAML_VALUES = 100_000  # a config this large is an alias bomb, not a config


def read_yaml(path: Path) -> dict:
    """The mapping a YAML config file holds (yaml.safe_load: no code runs, no Python tags);
    ConfigError for a file that cannot be read, is not UTF-8 YAML, is not a mapping, refers
    to itself or expands (through aliases) to more than MAX_YAML_VALUES values."""
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ConfigError(f"{path}: cannot read YAML ({reason})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, found {type(raw).__name__}")
    try:
        size = _expanded_size(raw, {}, set())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    if size > MAX_YAML_VALUES:
        raise ConfigError(f"{path}: expands to more than {MAX_YAML_VALUES} values "
                          "(aliases of aliases?)")
    return raw


def _expanded_size(value, sizes: dict, open_ids: set) -> int:
    """How many values ``value`` holds once its aliases are expanded (memoized by identity,
    so a bomb is measured without expanding it); ConfigError for one that holds itself."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_ids:
        raise ConfigError("the YAML refers to itself (a recursive alias)")
    open_ids.add(key)
    children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
    sizes[key] = 1 + sum(_expanded_size(child, sizes, open_ids) for child in children)
    open_ids.discard(key)
    return sizes[key]


def config_from_dict(raw: dict, overrides: dict | None = None, source: str = "config") -> RunConfig:
    """Validate a config dict after applying dotted overrides; ConfigError on any problem."""
    raw = dict(raw)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            child = {} if node.get(key) is None else node[key]
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {dotted}: {key} is a setting, not a section")
            node[key] = dict(child)  # a copy: the caller's dict stays as it was
            node = node[key]
        node[last] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{source}: {problems}") from None


def _relative_to(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p))
