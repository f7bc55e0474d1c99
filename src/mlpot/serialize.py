"""Saving and loading potentials without pickle: a folder of JSON + safetensors.

Layout of a saved model folder:
  config.json        format, model kind and its constructor arguments, E0 by symbol
  metadata.json      free-form facts (training run, metrics, versions)
  model.safetensors  every tensor of the potential's state dict
Loading reads JSON and raw tensors only; it never executes code from the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from ase.data import chemical_symbols
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from mlpot.errors import ModelFileError
from mlpot.files import atomic_folder, write_bytes_atomic, write_json_atomic  # noqa: F401 (older imports)
from mlpot.models import build_model
from mlpot.models.variance import VarianceHead
from mlpot.physics.dispersion import Dispersion
from mlpot.physics.electrostatics import Electrostatics
from mlpot.potential import Potential

FORMAT = "mlpot-model"
CHECKSUM = "weights_sha256"  # config.json: SHA-256 of model.safetensors (absent before)
VERSION = 9  # 2: models record their "baseline" (version 1 used the linear one);
#              3: optional "variance_head" (aleatoric uncertainty);
#              4: optional "long_range" (learned charges + Coulomb);
#              5: optional "dispersion" (learned volumes + damped C6/r⁶)
#              6: the variance head records its "link" (exp; older heads are softplus)
#              7: charge "neutrality" defaults to "fragments", now blended smoothly below the
#                 cutoff in training and prediction (older files: "structure" when absent)
#              8: the dispersion volume head records its "volume_features" (older: "g2")
#              9: the charge head's "formal_networks" decide the fragments' integers (older:
#                 the raw charges' sums)


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


def _parts(config: dict) -> dict[str, torch.nn.Module | None]:
    """The potential's sub-modules by attribute name, built from ``config`` (in its dtype)."""
    dtype = getattr(torch, config.get("dtype", "float64"))
    head, long_range = config.get("variance_head"), config.get("long_range")
    dispersion = config.get("dispersion")
    parts = {"model": build_model(config["model_kind"], **config["model"]),
             "variance_head": VarianceHead(**{"link": "softplus", **head}) if head else None,
             "long_range": Electrostatics(**long_range) if long_range else None,
             "dispersion": Dispersion(**dispersion) if dispersion else None}
    return {name: None if part is None else part.to(dtype) for name, part in parts.items()}


def build_potential(config: dict) -> Potential:
    """An untrained potential of the architecture ``config`` describes."""
    parts = _parts(config)
    potential = Potential(parts["model"], config["reference_energies"], parts["variance_head"],
                          parts["long_range"], parts["dispersion"])
    return potential.to(getattr(torch, config.get("dtype", "float64")))


def sha256(file: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded beside tensors so that damage is found)."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checksum(file: Path, recorded, where: str) -> None:
    """ModelFileError unless ``file``'s SHA-256 is ``recorded`` (None: nothing recorded,
    as in files of older versions)."""
    if recorded is None:
        return
    if not isinstance(recorded, str):
        raise ModelFileError(f"{where}: field '{CHECKSUM}' must be a hex string")
    try:
        found = sha256(file)
    except FileNotFoundError as error:
        raise ModelFileError(f"{file}: missing") from error
    if found != recorded:
        raise ModelFileError(f"{file}: contents differ from the checksum in {where} (the file "
                             "is damaged or was changed)")


def save(potential: Potential, path: str | Path, metadata: dict | None = None) -> Path:
    """Save to folder ``path`` atomically (a finished folder replaces any old one)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in potential.state_dict().items()}
    with atomic_folder(path) as tmp:
        write_bytes_atomic(tmp / "model.safetensors", save_tensors(state))
        write_json_atomic(tmp / "config.json", {**potential_config(potential),
                                                CHECKSUM: sha256(tmp / "model.safetensors")})
        write_json_atomic(tmp / "metadata.json", metadata or {})
    return Path(path)


# -- loading: every field checked, sizes checked before anything is allocated ------------

DTYPES = ("float32", "float64")
MIN_SIZE_BOUND = 10_000  # any whole number in config.json up to this is allowed
MAX_CUTOFF = 100.0  # Å: any cutoff in a model file beyond this is damage, not a model
_CONFIG_FIELDS = {"model_kind": str, "model": dict, "reference_energies": dict}
_OPTIONAL_PARTS = ("variance_head", "long_range", "dispersion")


def read_json_object(file: Path) -> dict:
    """The JSON object in ``file``; ModelFileError naming the file on anything else
    (missing, unreadable, not UTF-8, not JSON, not an object)."""
    try:
        data = json.loads(Path(file).read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise ModelFileError(f"{file}: missing") from error
    except OSError as error:
        raise ModelFileError(f"{file}: cannot be read ({error.strerror})") from error
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelFileError(f"{file}: not valid JSON ({error})".splitlines()[0]) from error
    if not isinstance(data, dict):
        raise ModelFileError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def finite_number(file: Path, field: str, value, minimum: float | None = None) -> float:
    """``value`` as a float if it is a finite number (≥ ``minimum``), else ModelFileError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelFileError(f"{file}: field '{field}' must be a finite number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ModelFileError(f"{file}: field '{field}' must be ≥ {minimum}, not {value!r}")
    return float(value)


def sigma_scales(file: Path, description: dict) -> dict[str, float]:
    """The σ scale factors {"energy", "forces"} of an ensemble or last-layer description
    (1 where absent), checked to be finite and ≥ 0."""
    scale = description.get("sigma_scale", {})
    if not isinstance(scale, dict):
        raise ModelFileError(f"{file}: field 'sigma_scale' must be an object, not {scale!r}")
    return {name: finite_number(file, f"sigma_scale.{name}", scale.get(name, 1.0), minimum=0.0)
            for name in ("energy", "forces")}


def check_config(config: dict, file: Path) -> dict:
    """``config`` (config.json) if every field has the right type, else ModelFileError."""
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{file}: format is {config.get('format')!r}, not {FORMAT!r}")
    version = config.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelFileError(f"{file}: field 'version' must be an integer, not {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{file}: version {version} is newer than this mlpot reads "
                             f"({VERSION})")
    for field, kind in _CONFIG_FIELDS.items():
        if not isinstance(config.get(field), kind):
            raise ModelFileError(f"{file}: field '{field}' must be a {kind.__name__}, not "
                                 f"{config.get(field)!r}"[:300])
    for part in _OPTIONAL_PARTS:
        if not isinstance(config.get(part), (dict, type(None))):
            raise ModelFileError(f"{file}: field '{part}' must be an object or null")
    if config.get("dtype", "float64") not in DTYPES:
        raise ModelFileError(f"{file}: field 'dtype' must be one of {DTYPES}, not "
                             f"{config.get('dtype')!r}")
    for symbol, value in config["reference_energies"].items():
        if symbol not in chemical_symbols[1:]:
            raise ModelFileError(f"{file}: field 'reference_energies' names {symbol!r}, not "
                                 "an element")
        finite_number(file, f"reference_energies.{symbol}", value)
    for field, value in _numbers(config):
        finite_number(file, field, value)
        if field.rsplit(".", 1)[-1].endswith("cutoff") and not 0 < value <= MAX_CUTOFF:
            raise ModelFileError(f"{file}: field '{field}' must be in (0, {MAX_CUTOFF}] Å, "
                                 f"not {value!r}")
    if version < 2 and config["model_kind"] != "linear":
        config["model"].setdefault("baseline", "linear")
    if version < 7 and config.get("long_range"):
        config["long_range"].setdefault("neutrality", "structure")
    if version < 8 and config.get("dispersion"):
        config["dispersion"].setdefault("volume_features", "g2")
    if version < 9 and config.get("long_range"):
        config["long_range"].setdefault("formal_networks", False)
    return config


def _numbers(data, prefix: str = ""):
    """(dotted field name, value) of every number in nested JSON ``data``."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(data, dict) else f"{prefix[:-1]}[{key}]"
        if isinstance(value, (dict, list)):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


_BUILD_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError,
                 NotImplementedError, OverflowError, ZeroDivisionError)


def _not_a_model(file: Path, error: Exception) -> ModelFileError:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelFileError(f"{file}: does not describe a model ({message})"[:400])


def _expected_tensors(config: dict, file: Path) -> dict[str, tuple[tuple, torch.dtype]]:
    """Name → (shape, dtype) of every tensor the architecture in ``config`` holds, found
    without allocating it (built on torch's meta device)."""
    try:
        with torch.device("meta"):
            parts = _parts(config)
    except _BUILD_ERRORS as error:
        raise _not_a_model(file, error) from error
    return {f"{name}.{key}": (tuple(value.shape), value.dtype)
            for name, part in parts.items() if part is not None
            for key, value in part.state_dict().items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def read_header(file: Path) -> dict[str, tuple[tuple, str]]:
    """Name → (shape, safetensors dtype name) of every tensor in a safetensors file, from its
    header only; safetensors itself checks that the header's offsets fit the file's size."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()),
                           handle.get_slice(name).get_dtype()) for name in handle.keys()}
    except FileNotFoundError as error:
        raise ModelFileError(f"{file}: missing") from error
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ModelFileError(f"{file}: not a readable safetensors file ({message})") from error


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def check_safetensors(file: Path, expected: dict[str, tuple[tuple, torch.dtype]],
                      config_file: str = "config.json", found: dict | None = None) -> None:
    """Raise ModelFileError unless the safetensors ``file`` holds exactly the tensors
    ``expected`` (name → shape, dtype); ``found``: its header if already read."""
    found = read_header(file) if found is None else found
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{file}: tensors do not fit the architecture in {config_file} "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name, (shape, dtype) in expected.items():
        shape_found, dtype_found = found[name]
        if shape_found != shape or _SAFETENSORS_DTYPES.get(dtype_found) != dtype:
            raise ModelFileError(f"{file}: tensor '{name}' is {dtype_found} {list(shape_found)}; "
                                 f"{config_file} describes {_dtype_name(dtype)} {list(shape)}")


def check_sizes(config: dict, file: Path, header: dict[str, tuple[tuple, str]]) -> None:
    """Every whole number in ``config`` (widths, layer counts, grid sizes) must be at most
    the number of values the weights file holds (10 000 at least): a larger one cannot fit
    those weights, and building it could take unbounded time and memory."""
    bound = max(sum(math.prod(shape) for shape, _ in header.values()), MIN_SIZE_BOUND)
    for field, value in _numbers(config):
        if field != "version" and isinstance(value, int) and abs(value) > bound:
            raise ModelFileError(f"{file}: field '{field}' = {value} is larger than the "
                                 f"weights file allows ({bound} values)")


def check_finite(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Raise ModelFileError naming the first tensor holding NaN or infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{file}: tensor '{name}' holds NaN or infinite values")


def load(path: str | Path) -> Potential:
    """Load a potential saved by :func:`save` (in eval mode).

    Every field of config.json and the safetensors header is checked against each other
    before any tensor is allocated; any problem raises :class:`ModelFileError` naming the
    file and the field. Nothing in the folder is executed."""
    path = Path(path)
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    if not path.is_dir() or not config_file.exists() or not weights_file.exists():
        raise ModelFileError(f"{path} is not an mlpot model folder "
                             "(expected config.json and model.safetensors)")
    config = check_config(read_json_object(config_file), config_file)
    check_checksum(weights_file, config.get(CHECKSUM), str(config_file))
    header = read_header(weights_file)
    check_sizes(config, config_file, header)
    check_safetensors(weights_file, _expected_tensors(config, config_file), found=header)
    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{weights_file}: not a readable safetensors file ({error})") \
            from error
    check_finite(weights_file, state)
    try:
        potential = build_potential(config)
    except _BUILD_ERRORS as error:
        raise _not_a_model(config_file, error) from error
    try:
        potential.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(f"{weights_file}: weights do not fit the architecture in "
                             f"config.json ({error})") from error
    return potential.eval()


def read_metadata(path: str | Path) -> dict:
    """The metadata.json of a saved model ({} if absent)."""
    file = Path(path) / "metadata.json"
    return read_json_object(file) if file.exists() else {}
