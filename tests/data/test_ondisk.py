"""The on-disk data set (mlpot.data.ondisk): HDF5 written in a stream and read lazily.

Every check compares with the independent path: the same frames read from extxyz into
memory by mlpot.data.records (which ASE parses). The key test trains the same config from
the extxyz and from the converted .h5 file and finds the same losses and weights.
"""

import csv
import json
import multiprocessing
import os
import pickle
import subprocess
import sys

import ase.io
import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from safetensors.torch import load_file

from mlpot.data.batch import GraphCache
from mlpot.data.dataset import (compositions, elements_of, energies, fit_reference_energies,
                                force_rms, per_atom_energy_residuals, split_isolated_atoms)
from mlpot.data.lazy import FrameSubset, is_lazy
from mlpot.data.ondisk import HDF5Frames, convert, write_hdf5
from mlpot.data.records import read_frames
from mlpot.errors import DataError
from mlpot.models.moments import ElementMoments
from mlpot.models.standardize import element_feature_stats
from helpers import acac_head

LINES = 17  # lines per acac frame
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FIELDS = ("numbers", "positions", "cell", "pbc", "forces", "stress", "dipole",
          "partial_charges")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def assert_same_frame(a, b):
    """Every field equal, exactly (float64 in, float64 out)."""
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.asarray(x).dtype == np.asarray(y).dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in ("energy", "charge", "config_type", "source", "index"):
        assert getattr(a, name) == getattr(b, name), name


@pytest.fixture(scope="module")
def acac_h5(acac_frames, tmp_path_factory):
    path = tmp_path_factory.mktemp("ondisk") / "acac.h5"
    write_hdf5(acac_frames, path, chunk=64)  # several write chunks
    return path


@pytest.fixture(scope="module")
def labelled_xyz(tmp_path_factory):
    """Periodic and molecular frames with every kind of label, some missing: stress (on a
    calculator, as Voigt 6-vector), dipole, partial charges, total charge, config_type, an
    isolated atom and frames without forces or energy."""
    rng = np.random.default_rng(5)
    structures = []
    for k in range(7):
        periodic = k % 2 == 0
        n = 2 + k
        atoms = Atoms(numbers=rng.choice([1, 6, 8, 14], n),
                      positions=rng.uniform(0, 4.0, (n, 3)) + 1.5 * np.arange(n)[:, None],
                      cell=np.diag([12.0, 13.0, 14.0]) + 0.3 * rng.normal(size=(3, 3)),
                      pbc=periodic)
        results = {"energy": float(rng.normal(-100, 5))}
        if k != 3:
            results["forces"] = rng.normal(size=(n, 3))
        if periodic:
            results["stress"] = rng.normal(size=6) * 1e-3
        atoms.calc = SinglePointCalculator(atoms, **results)
        if not periodic:
            atoms.info["dipole"] = rng.normal(size=3)
            atoms.arrays["charges"] = rng.normal(size=n) * 0.2
        atoms.info["charge"] = float(k % 3 - 1)
        if k != 1:
            atoms.info["config_type"] = f"kind{k}"
        structures.append(atoms)
    single = Atoms("O", positions=[[0, 0, 0]])
    single.info.update(config_type="IsolatedAtom", energy=-2040.0)
    unlabelled = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]])
    path = tmp_path_factory.mktemp("labelled") / "labelled.xyz"
    ase.io.write(path, structures + [single, unlabelled], format="extxyz")
    return path


# -- round trip --------------------------------------------------------------------------

def test_acac_round_trip_every_frame(acac_frames, acac_h5):
    frames = read_frames(acac_h5)
    assert isinstance(frames, HDF5Frames) and len(frames) == len(acac_frames)
    for a, b in zip(acac_frames, frames):  # iteration reads blocks
        assert_same_frame(a, b)
    for k in (0, 17, len(frames) - 1):  # single random access
        assert_same_frame(acac_frames[k], frames[k])
    assert frames[3].source == str(acac_frames[3].source)  # errors keep naming the xyz file


def test_every_label_round_trips(labelled_xyz, tmp_path):
    memory = read_frames(labelled_xyz, require_energy=False)
    assert memory[0].stress is not None and memory[1].dipole is not None  # the fixture works
    assert memory[3].forces is None and memory[-1].energy is None
    path = tmp_path / "labelled.h5"
    summary = write_hdf5(memory, path, source_note="test")
    assert summary["frames"] == len(memory) and summary["atoms"] == sum(map(len, memory))
    disk = read_frames(path, require_energy=False)
    assert len(disk) == len(memory)
    for a, b in zip(memory, disk):
        assert_same_frame(a, b)
    with h5py.File(path) as handle:
        assert handle.attrs["format"] == "mlpot-frames" and handle.attrs["version"] == 1
        assert handle.attrs["source_note"] == "test"
        assert handle.attrs["n_with_forces"] == sum(f.forces is not None for f in memory)
        assert handle.attrs["n_with_stress"] == sum(f.stress is not None for f in memory) > 0


def test_missing_energy_names_the_original_frame(labelled_xyz, tmp_path):
    path = tmp_path / "labelled.h5"
    write_hdf5(read_frames(labelled_xyz, require_energy=False), path)
    with pytest.raises(DataError) as error:
        read_frames(path, energy_key="REF_energy")
    message = str(error.value)
    assert str(labelled_xyz) in message and "frame 8" in message and "REF_energy" in message


# -- lazy views and columns ------------------------------------------------------------------

def test_slices_and_index_arrays_are_lazy_views(acac_frames, acac_h5):
    frames = HDF5Frames(acac_h5)
    n = len(frames)
    for key, expected in [(slice(2, 40, 3), list(range(2, 40, 3))),
                          (slice(None, None, -50), list(range(n - 1, -1, -50))),
                          ([5, 1, 5, -1], [5, 1, 5, n - 1]),
                          (np.arange(n) % 97 == 0, list(range(0, n, 97)))]:
        view = frames[key]
        assert isinstance(view, FrameSubset) and len(view) == len(expected)
        for k, frame in zip(expected, view):
            assert_same_frame(acac_frames[k], frame)
    nested = frames[10:100][[3, 0]][1:]  # a view of a view refers to the file directly
    assert nested.base is frames and list(nested.indices) == [10]
    assert_same_frame(frames[-2], acac_frames[-2])
    with pytest.raises(IndexError):
        frames[n]
    with pytest.raises(IndexError):
        frames[[0, n]]


def test_columns_equal_the_frames_in_memory(acac_frames, acac_h5, labelled_xyz, tmp_path):
    memory = read_frames(labelled_xyz, require_energy=False)
    path = tmp_path / "labelled.h5"
    write_hdf5(memory, path)
    for frames, lazy in [(acac_frames, HDF5Frames(acac_h5)),
                         (memory, read_frames(path, require_energy=False))]:
        for pick in (slice(None), [4, 0, 4, 2]):
            listed = frames[pick] if isinstance(pick, slice) else [frames[k] for k in pick]
            view = lazy[pick]
            elements = elements_of(listed)
            assert view.elements() == elements
            np.testing.assert_array_equal(energies(view), energies(listed))
            np.testing.assert_array_equal(compositions(view, elements),
                                          compositions(listed, elements))
            assert force_rms(view) == force_rms(listed)  # to the bit
            assert view.isolated_mask().tolist() == [f.is_isolated_atom for f in listed]
    residual = per_atom_energy_residuals(acac_frames, {"H": -13.0, "C": -1000.0, "O": -2000.0})
    expected = [(f.energy - sum({1: -13.0, 6: -1000.0, 8: -2000.0}[z] for z in f.numbers))
                / len(f) for f in acac_frames]
    np.testing.assert_allclose(residual, expected, rtol=1e-12)


def test_statistics_match_the_in_memory_path(labelled_xyz, tmp_path):
    memory = read_frames(labelled_xyz, require_energy=False)
    write_hdf5(memory, tmp_path / "x.h5")
    disk = read_frames(tmp_path / "x.h5", require_energy=False)
    isolated_m, rest_m = split_isolated_atoms(memory)
    isolated_d, rest_d = split_isolated_atoms(disk)
    assert is_lazy(rest_d) and len(rest_d) == len(rest_m) and len(isolated_d) == 1
    for a, b in zip(isolated_m + list(rest_m), isolated_d + list(rest_d)):
        assert_same_frame(a, b)
    labelled = [k for k, f in enumerate(rest_m) if f.energy is not None]
    elements = elements_of(rest_m)
    assert fit_reference_energies(rest_d[labelled], elements) == fit_reference_energies(
        [rest_m[k] for k in labelled], elements)
    assert force_rms(rest_d) == force_rms(rest_m) > 0


def test_element_moments_equal_feature_stats_of_all_rows():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 12, generator=generator, dtype=torch.float64) * 3 + 1
    features[:, 4] = 2.5  # a constant feature
    features[:, 7] *= 1e-4  # a nearly constant one, floored
    species = torch.randint(0, 3, (500,), generator=generator)
    species[species == 2] = 1  # element 2 never seen
    moments = ElementMoments(3)
    for start in range(0, 500, 37):
        moments.add(features[start:start + 37], species[start:start + 37])
    mean, std = moments.stats(12)
    expected_mean, expected_std = element_feature_stats(features, species, 3)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(std, expected_std, rtol=1e-12, atol=1e-13)


def test_graphs_of_lazy_frames_are_not_kept(acac_frames, acac_h5):
    lazy, memory = GraphCache(HDF5Frames(acac_h5), 4.0), GraphCache(acac_frames, 4.0)
    a, b = lazy.batch([7, 3, 7, 200]), memory.batch([7, 3, 7, 200])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert lazy._graphs == [] and sum(g is not None for g in memory._graphs) == 3


def _send_positions(frames, connection):
    connection.send(frames[5].positions.copy())


def test_survives_pickling_and_forking(acac_frames, acac_h5):
    frames = HDF5Frames(acac_h5)
    frames[0]  # the parent has the file open
    copy = pickle.loads(pickle.dumps(frames[10:20]))
    assert_same_frame(copy[0], acac_frames[10])
    context = multiprocessing.get_context("fork")  # the child inherits the open handle
    receive, send = context.Pipe()
    child = context.Process(target=_send_positions, args=(frames, send))
    child.start()
    positions = receive.recv()
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(positions, acac_frames[5].positions)
    assert_same_frame(frames[6], acac_frames[6])  # and the parent's handle still works


# -- bad files -------------------------------------------------------------------------------

def test_files_that_are_not_mlpot_data_are_named(tmp_path):
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(DataError, match="not an HDF5 file") as error:
        read_frames(text)
    assert str(text) in str(error.value) and "'format'" in str(error.value)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["positions"] = np.zeros((3, 3))
    with pytest.raises(DataError, match="not an mlpot data file") as error:
        read_frames(foreign)
    assert str(foreign) in str(error.value)
    with pytest.raises(DataError, match="does not exist"):
        read_frames(tmp_path / "missing.h5")


def test_a_newer_version_is_refused(acac_frames, tmp_path):
    path = tmp_path / "future.h5"
    write_hdf5(acac_frames[:3], path)
    with h5py.File(path, "a") as handle:
        handle.attrs["version"] = 2
    with pytest.raises(DataError, match="version 2 is newer") as error:
        HDF5Frames(path)
    assert str(path) in str(error.value) and "'version'" in str(error.value)


def test_failed_write_leaves_nothing_and_keeps_an_existing_file(acac_frames, tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"the old file")

    def frames():
        yield from acac_frames[:5]
        raise DataError("broken input", source="x.xyz", frame=5)

    with pytest.raises(DataError, match="broken input"):
        write_hdf5(frames(), out, chunk=2)
    assert out.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no temporary left
    with pytest.raises(DataError, match="no frames"):
        write_hdf5([], tmp_path / "empty.h5")
    assert not (tmp_path / "empty.h5").exists()


# -- the command line ------------------------------------------------------------------------

def mlpot_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlpot", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=300)


def test_cli_convert(acac_dir, tmp_path):
    train = acac_head(acac_dir / "train_300K.xyz", tmp_path / "train_20.xyz", 20)
    out = tmp_path / "data.h5"
    done = mlpot_cli("data", "convert", train, acac_dir / "isolated_atoms.xyz", out,
                     "--progress-every", "1")
    assert done.returncode == 0, done.stderr
    assert f"{out}: 23 frames (303 atoms)" in done.stdout and "MiB" in done.stdout
    assert "23 frames (303 atoms) written" in done.stderr  # progress
    expected = read_frames(train) + read_frames(acac_dir / "isolated_atoms.xyz")
    frames = read_frames(out)
    assert len(frames) == 23
    for a, b in zip(expected, frames):
        assert_same_frame(a, b)
    assert "mlpot data convert" in h5py.File(out).attrs["source_note"]


def test_cli_convert_with_keys_and_db_select(acac_dir, tmp_path):
    import ase.db

    frames = read_frames(acac_head(acac_dir / "train_300K.xyz", tmp_path / "t.xyz", 4))
    with ase.db.connect(tmp_path / "labels.db") as db:
        for k, frame in enumerate(frames):
            atoms = frame.to_atoms()
            db.write(atoms, level="a" if k % 2 else "b",
                     data={"REF_energy": frame.energy, "REF_forces": frame.forces})
    out = tmp_path / "a.h5"
    done = mlpot_cli("data", "convert", tmp_path / "labels.db", out, "--energy-key",
                     "REF_energy", "--forces-key", "REF_forces", "--db-select", "level=a")
    assert done.returncode == 0, done.stderr
    disk = read_frames(out)
    assert len(disk) == 2
    for frame, original in zip(disk, frames[1::2]):
        assert frame.energy == original.energy
        np.testing.assert_array_equal(frame.forces, original.forces)


def test_cli_convert_bad_input_leaves_no_output(acac_dir, tmp_path):
    bad = acac_head(acac_dir / "train_300K.xyz", tmp_path / "bad.xyz", 3)
    lines = bad.read_text().splitlines()
    lines[LINES + 5] = lines[LINES + 5].rsplit(maxsplit=1)[0] + " nan"  # frame 1: a NaN force
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.h5"
    done = mlpot_cli("data", "convert", bad, out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(bad) in done.stderr and "frame 1" in done.stderr and "'forces'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.xyz"]
    out.write_bytes(b"keep me")
    assert mlpot_cli("data", "convert", bad, out).returncode == 2
    assert out.read_bytes() == b"keep me"
    done = mlpot_cli("data", "convert", bad, tmp_path / "out.xyz")
    assert done.returncode == 2 and ".h5" in done.stderr


# -- training from disk equals training in memory ---------------------------------------------

def _train(data_file, out):
    from mlpot.config import config_from_dict
    from mlpot.train.run import run_training

    config = config_from_dict({
        "data": {"train": str(data_file), "valid_fraction": 0.25, "max_train": 24},
        "model": {"kind": "bpnn", "cutoff": 4.0, "n_radial": 4, "n_angular_eta": 1,
                  "zetas": [1.0], "hidden": [8]},
        # the descriptor cache is for data in memory only: off for both, so both take
        # exactly the same steps (with it the in-memory forces differ by rounding)
        "training": {"max_epochs": 3, "max_minutes": None, "batch_size": 8, "dtype": "float64",
                     "threads": 1, "cache_descriptors": False, "lr_schedule": "plateau"},
        "seed": 3, "out": str(out)})
    summary = run_training(config, progress=False)
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    return summary, rows, load_file(str(out / "model" / "model.safetensors"))


def test_training_from_disk_equals_training_in_memory(acac_dir, tmp_path):
    from mlpot.config import config_from_dict
    from mlpot.train.run import load_data

    train = acac_head(acac_dir / "train_300K.xyz", tmp_path / "train.xyz", 40)
    both = tmp_path / "both.xyz"  # isolated atoms inside the training file: split off
    both.write_text(train.read_text() + (acac_dir / "isolated_atoms.xyz").read_text())
    h5 = tmp_path / "both.h5"
    convert([both], h5)

    data = load_data(config_from_dict({"data": {"train": str(h5), "max_train": 24}}))
    assert is_lazy(data["train"]) and is_lazy(data["valid"]) and len(data["isolated"]) == 3

    memory, memory_rows, memory_weights = _train(both, tmp_path / "memory")
    disk, disk_rows, disk_weights = _train(h5, tmp_path / "disk")
    assert len(memory_rows) == len(disk_rows) == 3
    for a, b in zip(memory_rows, disk_rows):
        for key in ("train_loss", "valid_loss", "valid_energy_rmse", "valid_force_rmse"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-9, abs=0)
    assert memory_weights.keys() == disk_weights.keys()
    for key, value in memory_weights.items():
        # to float64 rounding: summation order in threaded kernels varies from run to run
        torch.testing.assert_close(disk_weights[key], value, rtol=1e-9, atol=1e-10)
    for name, metrics in memory["metrics"].items():
        assert disk["metrics"][name] == pytest.approx(metrics, rel=1e-9)
    run_memory = json.loads((tmp_path / "memory" / "run.json").read_text())
    run_disk = json.loads((tmp_path / "disk" / "run.json").read_text())
    assert run_disk["reference_energies"] == run_memory["reference_energies"]
    assert run_disk["e0_source"] == "isolated atoms"
    assert float(memory_rows[-1]["valid_loss"]) < float(memory_rows[0]["valid_loss"])
