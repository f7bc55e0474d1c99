"""Damaged and hostile model files of every format mlpot reads: single potentials (with a
variance head; with long-range terms), ensembles, last-layer models, Δ-models, exported
.pt2 programs and training checkpoints.

Each file of each saved folder is truncated at several points, has bytes flipped (in the
safetensors header and body), is replaced by garbage, deleted, or has its JSON fields
removed, mistyped or set to NaN; tensors get NaN, another dtype, another shape or a huge
shape. Loading must raise an MlpotError with a one-line message naming the folder (never
another exception), or — only where the change is harmless — load. Hostile pickles must
never run. A few cases go through the real CLI: exit 2, one `error:` line, no traceback,
and the damaged files are left as they were.
"""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import acac_head, E0, random_bpnn
from mlpot.errors import MlpotError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SEED = 2201


class _Marker:
    """A pickle that, if ever unpickled without restriction, creates a marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _long_range_potential():
    from mlpot.models import build_model
    from mlpot.physics.dispersion import Dispersion
    from mlpot.physics.electrostatics import Electrostatics
    from mlpot.potential import Potential

    torch.manual_seed(0)
    model = build_model("schnet", elements=[1, 6, 8], cutoff=4.0, n_features=8,
                        n_interactions=1, n_rbf=6)
    return Potential(model, E0, None, Electrostatics([1, 6, 8], 4.0),
                     Dispersion([1, 6, 8], 4.0)).double()


def _last_layer_model():
    from mlpot.uncertainty.last_layer import LastLayerUncertainty, last_layer_weights

    potential = random_bpnn(3)
    n = last_layer_weights(potential.model).numel()
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    offsets = torch.randn(3, n, generator=generator, dtype=torch.float64)
    return LastLayerUncertainty(potential, a @ a.T / n + torch.eye(n, dtype=torch.float64),
                                offsets, 1.5, 0.8, 0.1, "heads")


BASELINE = {"level": "emt", "engine": "ase", "method": "ase.calculators.emt:EMT", "basis": "",
            "arguments": {}}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One folder of each format: model (bpnn + variance head), long_range (SchNet + Coulomb
    + dispersion), ensemble, last_layer, delta (metadata names its baseline)."""
    from mlpot.serialize import save
    from mlpot.uncertainty.ensemble import Ensemble, save_ensemble
    from mlpot.uncertainty.last_layer import save_last_layer

    root = tmp_path_factory.mktemp("originals")
    save(random_bpnn(0, head=True), root / "model")
    save(_long_range_potential(), root / "long_range")
    save_ensemble(Ensemble([random_bpnn(1), random_bpnn(2)]), root / "ensemble")
    save_last_layer(_last_layer_model(), root / "last_layer")
    save(random_bpnn(4), root / "delta", {"baseline": BASELINE})
    return root


def load_everything(folder: Path):
    """What `mlpot eval` / `md` read of a model folder: the model, its baseline, metadata."""
    from mlpot.label.delta import baseline_engine
    from mlpot.uncertainty.ensemble import load_model, saved_metadata

    model = load_model(folder)
    baseline_engine(folder)
    saved_metadata(folder)
    return model


# -- mutations ------------------------------------------------------------------------------

def _safetensors_header(data: bytes) -> tuple[int, dict]:
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def _with_header(data: bytes, header: dict) -> bytes:
    length, _ = _safetensors_header(data)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def _huge_shape(data: bytes) -> bytes:
    _, header = _safetensors_header(data)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2**40, 2**20]
    return _with_header(data, header)


def _retensor(file: Path, change) -> None:
    """Rewrite a safetensors file with ``change`` applied to its tensors (a valid file)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def _drop_checksum(tensors_file: Path) -> None:
    """Remove the checksum recorded for ``tensors_file`` (config.json or last_layer.json)."""
    index = tensors_file.parent / ("config.json" if tensors_file.name == "model.safetensors"
                                   else "last_layer.json")
    description = json.loads(index.read_text())
    del description["weights_sha256"]
    index.write_text(json.dumps(description))


def _first_float(tensors):
    return next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel())


def _set_nan(tensors):
    name = _first_float(tensors)
    flat = tensors[name].clone().reshape(-1)
    flat[0] = float("nan")
    tensors[name] = flat.reshape(tensors[name].shape)


def _to_float32(tensors):
    name = _first_float(tensors)
    tensors[name] = tensors[name].float()


def _reshape(tensors):
    name = _first_float(tensors)
    tensors[name] = tensors[name].reshape(-1)[:max(tensors[name].numel() - 1, 1)].clone()


def _json_mutations(data: dict):
    """(name, new JSON text, must_fail) for a JSON object's top-level fields."""
    yield "not an object", "[]", True
    yield "null", "null", True
    for key, value in data.items():
        rest = {k: v for k, v in data.items() if k != key}
        yield f"without {key}", json.dumps(rest), None
        for wrong in (None, "text", -1, 1e308, [], {}, True):
            if wrong != value:
                yield f"{key}={wrong!r}", json.dumps({**data, key: wrong}), None
    if isinstance(data.get("reference_energies"), dict):
        for bad in (float("nan"), float("inf")):
            energies = {**data["reference_energies"], "H": bad}
            yield f"E0 H={bad}", json.dumps({**data, "reference_energies": energies}), True
        yield "E0 of a non-element", json.dumps(
            {**data, "reference_energies": {**data["reference_energies"], "Xx": 1.0}}), True
    if isinstance(data.get("model"), dict):
        model = data["model"]
        for key in model:
            yield f"model.{key} huge", json.dumps(
                {**data, "model": {**model, key: 2**40}}), True
        if "hidden" in model:
            yield "hidden 10^9", json.dumps({**data, "model": {**model, "hidden": [10**9]}}), True
    for key in ("sigma_scale", "prior"):
        if key in data:
            yield f"{key} NaN", json.dumps({**data, key: float("nan")}), True


def mutations(folder: Path, rng: np.random.Generator):
    """(name, apply(copy_of_folder), must_fail) for every file of ``folder``. must_fail None:
    loading may also succeed (the change is harmless or undetectable)."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder)
        data = file.read_bytes()
        # a metadata.json nobody reads: members' and last-layer's inner model's
        read = not (rel.name == "metadata.json" and len(rel.parts) > 1)
        must = True if read else None

        def put(content, rel=rel):
            return lambda root: (root / rel).write_bytes(content)

        optional = rel.name == "metadata.json"  # a model saved without metadata loads
        yield (f"{rel} missing", (lambda root, rel=rel: (root / rel).unlink()),
               None if optional else must)
        yield f"{rel} garbage", put(b"\x00\xffgarbage\x01" * 3), must
        yield f"{rel} pickle", None, must  # filled in by the test (needs its marker path)
        for cut in sorted({0, 1, 7, 9, len(data) // 3, len(data) // 2, len(data) - 2}):
            if 0 <= cut < len(data) - 1:
                yield f"{rel} truncated at {cut}", put(data[:cut]), must
        if rel.suffix == ".safetensors":
            length, _ = _safetensors_header(data)
            header = rng.integers(8, 8 + length, 6)
            body = rng.integers(8 + length, len(data), 6)
            for position in (*header, *body, 0, 3):
                flipped = bytearray(data)
                flipped[position] ^= 1 << int(rng.integers(8))
                yield f"{rel} bit flip at {position}", put(bytes(flipped)), True
            yield f"{rel} huge shape in header", put(_huge_shape(data)), True
            # the checks behind the checksum: as in files written before it was recorded
            yield (f"{rel} huge shape in header, no checksum",
                   lambda root, rel=rel: (_drop_checksum(root / rel),
                                          (root / rel).write_bytes(_huge_shape(data))), True)
            for name, change in (("NaN weight", _set_nan), ("float32 tensor", _to_float32),
                                 ("wrong shape", _reshape)):
                yield (f"{rel} {name}, no checksum",
                       lambda root, rel=rel, change=change: (
                           _drop_checksum(root / rel), _retensor(root / rel, change)), True)
        if rel.suffix == ".json":
            for name, text, must_fail in _json_mutations(json.loads(data)):
                yield f"{rel} {name}", put(text.encode()), must_fail if read else None
            for position in rng.integers(0, len(data), 4):
                flipped = bytearray(data)
                flipped[position] ^= 1 << int(rng.integers(8))
                yield f"{rel} bit flip at {position}", put(bytes(flipped)), None


def _check_error(error: Exception, root: Path, case: str):
    assert isinstance(error, MlpotError), f"{case}: {type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message, f"{case}: message has several lines: {message!r}"
    assert str(root) in message, f"{case}: message does not name the folder: {message}"


@pytest.mark.parametrize("kind", ["model", "long_range", "ensemble", "last_layer", "delta"])
def test_damaged_model_folders_raise_one_line_errors(kind, originals, tmp_path):
    import mlpot.serialize

    rng = np.random.default_rng([SEED, len(kind)])
    marker = tmp_path / "pickle-was-executed"
    source = originals / kind
    load_everything(source)  # the undamaged folder loads
    cases, failures = 0, 0
    for k, (case, apply, must_fail) in enumerate(mutations(source, rng)):
        root = tmp_path / f"case_{k}"
        shutil.copytree(source, root)
        if apply is None:  # a hostile pickle in place of the file
            rel = case.removesuffix(" pickle")
            (root / rel).write_bytes(pickle.dumps(_Marker(marker)))
        else:
            apply(root)
        built = []
        real_build = mlpot.serialize.build_potential
        mlpot.serialize.build_potential = lambda config: (
            built.append(json.dumps(config)) or real_build(config))
        try:
            load_everything(root)
        except Exception as error:  # noqa: BLE001 (the point: which kind it is)
            _check_error(error, root, case)
            failures += 1
            if "huge" in case or "10^9" in case:  # refused before anything was allocated
                assert not any(str(2**40) in c or str(10**9) in c for c in built), \
                    f"{case}: the model was built before the sizes were checked"
        else:
            assert not must_fail, f"{case}: loaded without an error"
        finally:
            mlpot.serialize.build_potential = real_build
        shutil.rmtree(root)
        cases += 1
    assert not marker.exists()
    assert cases > 60 and failures > cases // 2


@pytest.mark.parametrize("method", ["subprocess:run", "ase.calculators.lammpslib:LAMMPSlib",
                                    "builtins:eval", "no-colon", None])
def test_a_baseline_in_a_model_file_cannot_run_code(method, originals, tmp_path, monkeypatch):
    """A Δ-model's metadata names an ASE calculator (module:Class) that eval and md import
    and call; a tampered one that would run a program is refused unless the user trusts it."""
    from mlpot.label.delta import baseline_engine

    marker = tmp_path / "baseline-was-executed"
    folder = tmp_path / "delta"
    shutil.copytree(originals / "delta", folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["baseline"] = {**BASELINE, "method": method,
                            "arguments": {"args": ["touch", str(marker)]}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(MlpotError, match=f"{folder}.*baseline"):
        load_everything(folder)
    assert not marker.exists()
    if method == "subprocess:run":  # named by the user: used
        monkeypatch.setenv("MLPOT_TRUSTED_CALCULATORS", method)
        assert baseline_engine(folder).calculator == method


# -- checkpoints --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(acac_dir, tmp_path_factory):
    """A two-epoch training of a tiny bpnn: its folder (checkpoint.pt, model/, run.json ...),
    config and a Trainer to resume from damaged copies of the checkpoint."""
    from mlpot.config import config_from_dict
    from mlpot.data.records import read_frames
    from mlpot.serialize import load
    from mlpot.train.run import run_training
    from mlpot.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("trained")
    train = folder / "train.xyz"
    acac_head(acac_dir / "train_300K.xyz", train, 16)
    config = config_from_dict({
        "data": {"train": str(train), "valid_fraction": 0.25},
        "model": {"kind": "bpnn", "cutoff": 4.0, "n_radial": 4, "n_angular_eta": 1,
                  "zetas": [1.0], "hidden": [8]},
        "training": {"max_epochs": 2, "max_minutes": None, "batch_size": 8},
        "seed": 1, "out": str(folder / "out")})
    run_training(config, progress=False)
    frames = read_frames(train)
    trainer = Trainer(load(folder / "out" / "model"), frames[:12], frames[12:], config.training,
                      folder / "out", seed=1, progress=False)
    return folder / "out", train, trainer


def test_damaged_checkpoints_raise_one_line_errors(trained, tmp_path):
    """checkpoint.pt is read weights-only: truncations, garbage, flipped bytes, NaN weights,
    missing fields and a hostile pickle raise MlpotError naming it; the pickle never runs."""
    out, _, trainer = trained
    data = (out / "checkpoint.pt").read_bytes()
    marker = tmp_path / "pickle-was-executed"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    rng = np.random.default_rng(SEED)
    cases = [("garbage", b"garbage" * 10, True), ("empty", b"", True),
             ("pickle", pickle.dumps(_Marker(marker)), True),
             ("torch.save pickle", None, True)]
    cases += [(f"truncated at {cut}", data[:cut], True)
              for cut in (1, 100, len(data) // 3, len(data) // 2, len(data) - 30)]
    for position in rng.integers(0, len(data), 12):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        cases.append((f"byte flip at {position}", bytes(flipped), None))
    for key in state:
        cases.append((f"without {key}", {k: v for k, v in state.items() if k != key},
                      key != "snapshots_done" and key != "ema"))
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    nan_model = {**state["model"], name: state["model"][name] * float("nan")}
    cases.append(("NaN weights", {**state, "model": nan_model}, True))
    wrong = {**state["model"], name: torch.zeros(7, 3)}
    cases.append(("wrong shape", {**state, "model": wrong}, True))
    cases.append(("not a dict", [1, 2, 3], True))
    for k, (case, content, must_fail) in enumerate(cases):
        folder = tmp_path / f"case_{k}"
        folder.mkdir()
        if content is None:
            torch.save({"model": _Marker(marker)}, folder / "checkpoint.pt")
        elif isinstance(content, bytes):
            (folder / "checkpoint.pt").write_bytes(content)
        else:
            torch.save(content, folder / "checkpoint.pt")
        trainer.out = folder
        try:
            trainer.resume()
        except Exception as error:  # noqa: BLE001
            _check_error(error, folder, case)
        else:
            assert not must_fail, f"{case}: resumed without an error"
    assert not marker.exists()


# -- exported programs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mlpot.export import export_potential

    return export_potential(random_bpnn(0), tmp_path_factory.mktemp("export") / "bpnn.pt2")


def _rezip(source: Path, target: Path, change) -> None:
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            content = change(name, old.read(name))
            if content is not None:
                new.writestr(name, content)


def test_damaged_and_hostile_exported_programs(exported, tmp_path):
    """torch.export.load would unpickle some members without restriction (a crafted .pt2
    runs code); ExportedPotential refuses those, and damaged archives, with MlpotError."""
    from mlpot.export import ExportedPotential

    ExportedPotential(exported)
    data = exported.read_bytes()
    marker = tmp_path / "pickle-was-executed"
    payload = pickle.dumps(_Marker(marker))
    rng = np.random.default_rng(SEED)

    def weights_config(name, content):
        if not name.endswith("_weights_config.json"):
            return content
        config = json.loads(content)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config)

    zipped = {"sample inputs pickle": lambda n, c: payload if "sample_inputs" in n else c,
              "use_pickle weight": weights_config,
              "no metadata": lambda n, c: None if n.endswith("mlpot.json") else c,
              "metadata dtype": lambda n, c: (json.dumps({**json.loads(c), "dtype": "int8"})
                                              if n.endswith("mlpot.json") else c),
              "no model": lambda n, c: None if "/models/" in n else c}
    cases = []
    for case, change in zipped.items():
        target = tmp_path / f"{len(cases)}.pt2"
        _rezip(exported, target, change)
        cases.append((case, target, True))
    legacy = tmp_path / "legacy.pt2"  # a legacy pickled weights file beside the others
    _rezip(exported, legacy, lambda n, c: c)
    import zipfile

    with zipfile.ZipFile(legacy, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/weights/model.pt", payload)
    cases.append(("legacy pickled weights", legacy, True))
    for cut in (0, 10, len(data) // 2, len(data) - 10):
        target = tmp_path / f"cut{cut}.pt2"
        target.write_bytes(data[:cut])
        cases.append((f"truncated at {cut}", target, True))
    for position in rng.integers(0, len(data), 5):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        target = tmp_path / f"flip{position}.pt2"
        target.write_bytes(bytes(flipped))
        cases.append((f"byte flip at {position}", target, None))
    for case, path, must_fail in cases:
        try:
            ExportedPotential(path)
        except Exception as error:  # noqa: BLE001
            _check_error(error, path, case)
        else:
            assert not must_fail, f"{case}: loaded without an error"
    assert not marker.exists()


# -- the real command line ----------------------------------------------------------------------

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mlpot", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.slow  # four subprocesses (~10 s each on a busy 2-core machine)
def test_cli_on_damaged_files_exits_2_with_one_line(originals, trained, tmp_path):
    """eval, md, export and train --resume on damaged model folders and checkpoints: exit 2,
    one `error:` line naming the file, no traceback, and nothing of the inputs changed."""
    out, train, _ = trained
    structure = tmp_path / "h2o.xyz"
    structure.write_text("3\nenergy=-2000.0\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    damaged = {}
    for name, change in (("nan_e0", "e0"), ("truncated", "cut"), ("ensemble", "members")):
        source = originals / ("ensemble" if name == "ensemble" else "model")
        folder = tmp_path / name
        shutil.copytree(source, folder)
        if change == "e0":
            config = json.loads((folder / "config.json").read_text())
            config["reference_energies"]["H"] = float("nan")
            (folder / "config.json").write_text(json.dumps(config))
        elif change == "cut":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:200])
        else:
            (folder / "ensemble.json").write_text('{"format": "mlpot-ensemble", "members": 3}')
        damaged[name] = folder
    run = tmp_path / "run"
    shutil.copytree(out, run)
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    runs = [("nan_e0", ["eval", damaged["nan_e0"], structure]),
            ("truncated", ["md", damaged["truncated"], structure, "--steps", "2",
                           "--out", tmp_path / "md.traj"]),
            ("ensemble", ["export", damaged["ensemble"], tmp_path / "x.pt2"]),
            ("checkpoint", ["train", "--train", train, "--model", "bpnn", "--cutoff", "4.0",
                            "--max-epochs", "3", "--out", run, "--resume"])]
    before = {name: _snapshot(folder) for name, folder in damaged.items()}
    before_run = _snapshot(run)
    for name, args in runs:
        result = _cli(*args, cwd=tmp_path)
        where = checkpoint if name == "checkpoint" else damaged[name]
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert str(where) in lines[0], lines[0]
    assert {name: _snapshot(folder) for name, folder in damaged.items()} == before
    assert _snapshot(run) == {**before_run, **{p: c for p, c in _snapshot(run).items()
                                              if p.name == ".mlpot.lock"}}
    assert not (tmp_path / "x.pt2").exists() and not (tmp_path / "md.traj").exists()
