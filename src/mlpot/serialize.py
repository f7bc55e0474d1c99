"""Saving and loading potentials without pickle: a folder of JSON + safetensors.

Layout of a saved model folder:
  config.json        format, model kind and its constructor arguments, E0 by symbol
  metadata.json      free-form facts (training run, metrics, versions)
  model.safetensors  every tensor of the potential's state dict
Loading reads JSON and raw tensors only; it never executes code from the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mlpot.errors import ModelFileError
from mlpot.models import build_model
from mlpot.models.variance import VarianceHead
from mlpot.physics.dispersion import Dispersion
from mlpot.physics.electrostatics import Electrostatics
from mlpot.potential import Potential

FORMAT = "mlpot-model"
VERSION = 6  # 2: models record their "baseline" (version 1 used the linear one);
#              3: optional "variance_head" (aleatoric uncertainty);
#              4: optional "long_range" (learned charges + Coulomb);
#              5: optional "dispersion" (learned volumes + damped C6/r⁶)
#              6: the variance head records its "link" (exp; older heads are softplus)


def potential_config(potential: Potential) -> dict:
    """JSON-able description from which :func:`build_potential` rebuilds the potential."""
    return {"format": FORMAT, "version": VERSION, "model_kind": potential.model.kind,
            "model": potential.model.config(),
            "reference_energies": potential.reference_energies,
            "variance_head": (potential.variance_head.config()
                              if potential.variance_head is not None else None),
            "long_range": (potential.long_range.config()
                           if potential.long_range is not None else None),
            "dispersion": (potential.dispersion.config()
                           if potential.dispersion is not None else None),
            "dtype": str(potential.dtype).removeprefix("torch.")}


def build_potential(config: dict) -> Potential:
    """An untrained potential of the architecture ``config`` describes."""
    model = build_model(config["model_kind"], **config["model"])
    head, long_range = config.get("variance_head"), config.get("long_range")
    dispersion = config.get("dispersion")
    potential = Potential(model, config["reference_energies"],
                          VarianceHead(**{"link": "softplus", **head}) if head else None,
                          Electrostatics(**long_range) if long_range else None,
                          Dispersion(**dispersion) if dispersion else None)
    return potential.to(getattr(torch, config.get("dtype", "float64")))


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` via a temporary file and rename, so readers never see half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def save(potential: Potential, path: str | Path, metadata: dict | None = None) -> Path:
    """Save to folder ``path`` atomically (a finished folder replaces any old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in potential.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    write_json_atomic(tmp / "config.json", potential_config(potential))
    write_json_atomic(tmp / "metadata.json", metadata or {})
    return replace_folder(tmp, path)


def replace_folder(tmp: Path, path: Path) -> Path:
    """Move the finished folder ``tmp`` to ``path``, replacing any old one by renames only."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load(path: str | Path) -> Potential:
    """Load a potential saved by :func:`save` (in eval mode)."""
    path = Path(path)
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    if not config_file.exists() or not weights_file.exists():
        raise ModelFileError(f"{path} is not an mlpot model folder "
                             "(expected config.json and model.safetensors)")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{config_file}: format is {config.get('format')!r}, not {FORMAT!r}")
    if config.get("version", 0) > VERSION:
        raise ModelFileError(f"{config_file}: version {config['version']} is newer than this "
                             f"mlpot reads ({VERSION})")
    if config.get("version", 1) < 2 and config["model_kind"] != "linear":
        config["model"].setdefault("baseline", "linear")
    potential = build_potential(config)
    state = load_file(str(weights_file))
    try:
        potential.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(f"{weights_file}: weights do not fit the architecture in "
                             f"config.json ({error})") from error
    return potential.eval()


def read_metadata(path: str | Path) -> dict:
    """The metadata.json of a saved model ({} if absent)."""
    file = Path(path) / "metadata.json"
    return json.loads(file.read_text()) if file.exists() else {}
