"""Damaged and hostile data files and configs: every reader mlpot has refuses them with an
MlpotError naming the file (the CLI: exit 2, one `error:` line, no traceback, no signal),
and never modifies them. Damage is drawn from a seeded generator: truncations, byte flips,
garbage, NaN/inf/huge numbers, wrong counts and sizes, edited HDF5 offsets, YAML bombs.

Byte flips may leave a file that is still valid (a flipped digit is another number): those
only have to read without any other exception. Every deliberately broken case must be
refused."""

import hashlib
import os
import subprocess
import sys
import zipfile

import ase.db
import ase.io
import h5py
import numpy as np
import pytest
import yaml

from mlpot.config import load_config, load_learn_config
from mlpot.data.ondisk import write_hdf5
from mlpot.data.records import KCAL_PER_MOL, read_frames
from mlpot.errors import MlpotError

LINES = 17  # lines per acac frame
N_FLIPS = 12  # byte-flipped copies per file type
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def read_everything(path):
    """What training reads of a file: every frame, validated (HDF5: when read)."""
    if str(path).endswith((".yaml", ".yml")):
        return load_config(path)
    return list(read_frames(path))


def assert_refused(path, *words):
    """An MlpotError naming the file (and ``words``); the file unchanged."""
    before = digest(path)
    with pytest.raises(MlpotError) as caught:
        read_everything(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    assert digest(path) == before


def assert_read_or_refused(path):
    """Either read, or refused with an MlpotError naming the file; never another exception;
    the file unchanged."""
    before = digest(path)
    try:
        read_everything(path)
    except MlpotError as error:
        assert str(path) in str(error), str(error)
    assert digest(path) == before


def damaged_copies(path, rng, folder):
    """Truncations at several points, byte flips, and files of garbage."""
    data = path.read_bytes()
    stem, suffix = path.stem, path.suffix
    for fraction in (0.0, 0.02, 0.3, 0.5, 0.77, 0.999):
        copy = folder / f"{stem}_cut{fraction}{suffix}"
        copy.write_bytes(data[:int(fraction * len(data))])
        yield copy
    for k in range(N_FLIPS):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), size=rng.integers(1, 9)):
            flipped[at] = int(rng.integers(0, 256))
        copy = folder / f"{stem}_flip{k}{suffix}"
        copy.write_bytes(bytes(flipped))
        yield copy
    copy = folder / f"{stem}_garbage{suffix}"
    copy.write_bytes(rng.integers(0, 256, size=4000, dtype=np.uint8).tobytes())
    yield copy


# -- the files, intact ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(acac_dir, tmp_path_factory):
    """Three acac frames as extxyz, ASE db, rMD17 npz and mlpot HDF5."""
    folder = tmp_path_factory.mktemp("fuzz")
    with open(acac_dir / "train_300K.xyz") as handle:
        text = "".join(next(handle) for _ in range(3 * LINES))
    xyz = folder / "good.xyz"
    xyz.write_text(text)
    structures = ase.io.read(xyz, ":")
    db = folder / "good.db"
    with ase.db.connect(db) as database:
        for atoms in structures:
            database.write(atoms)
    npz = folder / "good.npz"
    np.savez(npz, nuclear_charges=structures[0].numbers,
             coords=np.stack([a.positions for a in structures]),
             energies=np.array([a.get_potential_energy() for a in structures]) / KCAL_PER_MOL,
             forces=np.stack([a.get_forces() for a in structures]) / KCAL_PER_MOL)
    h5 = folder / "good.h5"
    write_hdf5(read_frames(xyz), h5)
    return {"xyz": xyz, "db": db, "npz": npz, "h5": h5}


def test_intact_files_read(files):
    for path in files.values():
        assert len(read_everything(path)) == 3


@pytest.mark.parametrize("kind", ["xyz", "db", "npz", "h5"])
def test_damaged_copies_are_read_or_refused(files, kind, tmp_path):
    rng = np.random.default_rng(22 + len(kind))
    for copy in damaged_copies(files[kind], rng, tmp_path):
        assert_read_or_refused(copy)
    for cut in tmp_path.glob("*_cut0.0*"):
        assert_refused(cut)  # an empty file
    for garbage in tmp_path.glob("*_garbage*"):
        assert_refused(garbage)


# -- extxyz --------------------------------------------------------------------------------

def _edit_xyz(files, folder, name, frame, edit):
    """good.xyz with line ``edit(lines)`` applied to frame ``frame``'s lines."""
    lines = files["xyz"].read_text().splitlines(keepends=True)
    block = lines[frame * LINES:(frame + 1) * LINES]
    lines[frame * LINES:(frame + 1) * LINES] = edit(block)
    path = folder / name
    path.write_text("".join(lines))
    return path


def _atom_line(block, atom, values):
    fields = block[2 + atom].split()
    fields[1:1 + len(values)] = values
    block[2 + atom] = " ".join(fields) + "\n"
    return block


@pytest.mark.parametrize("name, frame, edit, words", [
    ("count_high.xyz", 1, lambda b: ["16\n", *b[1:]], ["frame 1", "atom count"]),
    ("count_low.xyz", 1, lambda b: ["14\n", *b[1:]], ["frame 1", "atom count"]),
    ("count_word.xyz", 2, lambda b: ["fifteen\n", *b[1:]], ["frame 2"]),
    ("nan_position.xyz", 2, lambda b: _atom_line(b, 3, ["nan"]), ["frame 2", "positions"]),
    ("inf_force.xyz", 1, lambda b: _atom_line(b, 0, ["0", "0", "0", "inf"]),
     ["frame 1", "forces"]),
    ("far_atom.xyz", 1, lambda b: _atom_line(b, 4, ["1e8"]), ["frame 1", "positions"]),
    ("huge_atom.xyz", 1, lambda b: _atom_line(b, 4, ["1e300", "1e300", "-1e300"]),
     ["frame 1", "positions"]),
    ("overlap.xyz", 2, lambda b: [*b[:3], b[2], *b[4:]], ["frame 2", "positions"]),
    ("nan_energy.xyz", 1, lambda b: [b[0], b[1].replace("energy=", "energy=nan _e="), *b[2:]],
     ["frame 1", "energy"]),
    ("element.xyz", 0, lambda b: [*b[:2], "Xx" + b[2][1:], *b[3:]], ["frame 0"]),
    ("truncated.xyz", 2, lambda b: b[:9], ["frame 2"]),
])
def test_broken_xyz_names_file_and_frame(files, tmp_path, name, frame, edit, words):
    assert_refused(_edit_xyz(files, tmp_path, name, frame, edit), *words)


# -- npz -----------------------------------------------------------------------------------

def test_broken_npz_is_refused(files, tmp_path):
    good = dict(np.load(files["npz"]))
    n_atoms = len(good["nuclear_charges"])
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "energies"}, "energies"),
        "coords_2d": ({**good, "coords": good["coords"][:, :, :2]}, "coords"),
        "charges_short": ({**good, "nuclear_charges": good["nuclear_charges"][:-1]}, "coords"),
        "energies_short": ({**good, "energies": good["energies"][:2]}, "energies"),
        "forces_shape": ({**good, "forces": good["forces"][:, :3]}, "forces"),
        "nan_energy": ({**good, "energies": np.array([0.0, np.nan, 0.0])}, "frame 1"),
        "far_atom": ({**good, "coords": good["coords"] + np.eye(n_atoms, 3)[None] * 1e8},
                     "positions"),
        "text": ({**good, "energies": np.array(["a", "b", "c"])}, "energies"),
        "pickled": ({**good, "coords": np.array([{"a": 1}] * 3, dtype=object)}, "coords"),
    }
    for name, (arrays, word) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        assert_refused(path, word)
    not_npz = tmp_path / "members.npz"  # a zip whose member is no .npy
    with zipfile.ZipFile(not_npz, "w") as archive:
        archive.writestr("coords.npy", b"\x93NUMPY garbage")
    assert_refused(not_npz)


# -- ASE database --------------------------------------------------------------------------

def test_broken_db_is_refused(files, tmp_path):
    import sqlite3

    foreign = tmp_path / "foreign.db"  # SQLite, but not ASE's tables: never written to
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    assert_refused(foreign, "not an ASE database")
    structures = ase.io.read(files["xyz"], ":")
    structures[1].positions[3] = np.nan
    nan = tmp_path / "nan.db"
    with ase.db.connect(nan) as database:
        for atoms in structures:
            database.write(atoms)
    assert_refused(nan, "frame 1", "positions")


# -- mlpot HDF5 ----------------------------------------------------------------------------

def _edited_h5(files, folder, name, edit):
    path = folder / name
    path.write_bytes(files["h5"].read_bytes())
    with h5py.File(path, "r+") as handle:
        edit(handle)
    return path


def _set(name, index, value):
    def edit(handle):
        handle[name][index] = value
    return edit


def _copy_row(name, source, target):
    def edit(handle):
        handle[name][target] = handle[name][source]
    return edit


def _resize(name, size):
    def edit(handle):
        handle[name].resize(size, axis=0)
    return edit


def _replace(name, data):
    def edit(handle):
        del handle[name]
        handle.create_dataset(name, data=data)
    return edit


@pytest.mark.parametrize("name, edit, words", [
    ("offset_huge.h5", _set("offsets", 1, 10**12), ["offsets"]),
    ("offset_last.h5", _set("offsets", -1, 10**9), ["offsets"]),
    ("offset_negative.h5", _set("offsets", 2, -5), ["offsets"]),
    ("offset_back.h5", _set("offsets", 2, 3), ["offsets"]),
    ("energy_rows.h5", _resize("energy", 5), ["energy"]),
    ("atoms_rows.h5", _resize("positions", 10**9), ["positions"]),
    ("offsets_rows.h5", _resize("offsets", 10**8), ["offsets"]),
    ("source_row.h5", _set("source", 1, 99), ["source"]),
    ("energy_inf.h5", _set("energy", 1, np.inf), ["frame 1", "energy"]),
    ("position_nan.h5", _set("positions", 20, np.nan), ["frame 1", "positions"]),
    ("overlap.h5", _copy_row("positions", 15, 16), ["frame 1", "positions"]),
    ("far.h5", _set("positions", 35, [1e8, 0.0, 0.0]), ["frame 2", "positions"]),
    ("element_zero.h5", _set("numbers", 17, 0), ["frame 1", "numbers"]),
    ("element_huge.h5", _set("numbers", 40, 300), ["frame 2", "numbers"]),
    ("forces_nan.h5", _set("forces", 3, np.nan), ["frame 0", "forces"]),
    ("cell_nan.h5", _set("cell", 0, np.nan), ["frame 0", "cell"]),
    ("numbers_type.h5", _replace("numbers", np.zeros(45)), ["numbers"]),
    ("no_offsets.h5", lambda handle: handle.__delitem__("offsets"), ["offsets"]),
    ("no_format.h5", lambda handle: handle.attrs.__delitem__("format"), ["format"]),
])
def test_edited_h5_is_refused_before_reading_much(files, tmp_path, name, edit, words):
    import resource

    path = _edited_h5(files, tmp_path, name, edit)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert_refused(path, *words)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024


def test_h5_that_overlaps_names_its_frame_and_origin(files, tmp_path):
    path = _edited_h5(files, tmp_path, "o.h5", _copy_row("positions", 15, 16))
    assert_refused(path, "frame 1", f"from {files['xyz']}, frame 1")


# -- training files that cannot be split -----------------------------------------------------

def test_too_few_structures_to_train(files, acac_dir, tmp_path):
    from mlpot.config import config_from_dict
    from mlpot.train.run import load_data

    one = tmp_path / "one.xyz"
    one.write_text("".join(files["xyz"].read_text().splitlines(keepends=True)[:LINES]))
    with pytest.raises(MlpotError, match="too few to split"):
        load_data(config_from_dict({"data": {"train": str(one)}}))
    isolated = acac_dir / "isolated_atoms.xyz"
    with pytest.raises(MlpotError, match="only isolated atoms") as caught:
        load_data(config_from_dict({"data": {"train": str(isolated)}}))
    assert str(isolated) in str(caught.value)
    assert len(load_data(config_from_dict(  # one frame is fine when nothing is split off
        {"data": {"train": str(one), "valid": str(files["xyz"])}}))["train"]) == 1


# -- YAML ----------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
) + "data: {train: t.xyz, test: *i}\n"
YAMLS = {
    "list.yaml": ("- a\n- b\n", "mapping"),
    "number.yaml": ("42\n", "mapping"),
    "unknown.yaml": ("data: {train: t.xyz, trian: u.xyz}\n", "trian"),
    "type.yaml": ("data: {train: t.xyz}\ntraining: {max_minutes: ten}\n", "max_minutes"),
    "path_type.yaml": ("data: {train: [1, 2]}\n", "train"),
    "out_type.yaml": ("data: {train: t.xyz}\nout: {a: 1}\n", "out"),
    "data_text.yaml": ("data: hello\n", "data"),
    "bomb.yaml": (BOMB, "expands"),
    "recursive.yaml": ("data: &d {train: t.xyz, test: [*d]}\n", "itself"),
    "deep.yaml": ("data: " + "[" * 5000 + "]" * 5000 + "\n", "YAML"),
    "tag.yaml": ("data: !!python/object/apply:os.system ['touch PWNED']\n", "YAML"),
    "tabs.yaml": ("data:\n\ttrain: t.xyz\n", "YAML"),
    "latin1.yaml": ("data: {train: caf\xe9.xyz}\n".encode("latin-1"), "YAML"),
}


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_bad_yaml_is_one_line_config_error(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, word = YAMLS[name]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_refused(path, word)
    with pytest.raises(MlpotError) as caught:
        load_learn_config(path)
    assert str(path) in str(caught.value)
    assert not (tmp_path / "PWNED").exists()


def test_damaged_yaml_copies(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"data": {"train": "t.xyz", "test": ["a.xyz"]},
                                    "model": {"kind": "bpnn", "cutoff": 4.0},
                                    "training": {"max_minutes": 1.0}}))
    for copy in damaged_copies(good, np.random.default_rng(7), tmp_path):
        assert_read_or_refused(copy)
        try:
            load_learn_config(copy)
        except MlpotError as error:
            assert str(copy) in str(error)


# -- the command line ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small bpnn (H, C, O; random weights) saved as a model folder."""
    from helpers import random_bpnn

    from mlpot.serialize import save

    return save(random_bpnn(0), tmp_path_factory.mktemp("model") / "model")


@pytest.mark.slow
def test_cli_refuses_bad_input_with_one_line(files, model_dir, tmp_path):
    """A handful of real `python -m mlpot` runs, in parallel: exit 2, one `error:` line
    naming the file, no traceback, no signal, inputs untouched, no output left behind."""
    far = _edit_xyz(files, tmp_path, "far.xyz", 1, lambda b: _atom_line(b, 4, ["1e8"]))
    offsets = _edited_h5(files, tmp_path, "offsets.h5", _set("offsets", 1, 10**12))
    one = tmp_path / "one.xyz"
    one.write_text("".join(files["xyz"].read_text().splitlines(keepends=True)[:LINES]))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**dict(np.load(files["npz"])),
                         "energies": np.array([{}, {}, {}], dtype=object)})
    runs = {
        far: ["eval", model_dir, far],
        offsets: ["eval", model_dir, offsets],
        one: ["train", "--train", one, "--out", tmp_path / "run_one"],
        bomb: ["train", bomb],
        pickled: ["data", "convert", pickled, tmp_path / "out.h5"],
    }
    kept = tmp_path / "out.h5"  # an earlier conversion: a failed one must leave it be
    kept.write_bytes(files["h5"].read_bytes())
    before = {path: digest(path) for path in [*runs, kept]}
    processes = {path: subprocess.Popen([sys.executable, "-m", "mlpot", *map(str, args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=ENV, cwd=tmp_path)
                 for path, args in runs.items()}
    for path, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (path, process.returncode, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert str(path) in lines[0] and "Traceback" not in stderr, stderr
        assert digest(path) == before[path]
    assert digest(kept) == before[kept]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.h5")] == []


# -- structures vesin cannot search (SIGFPE before) -------------------------------------------

def test_flat_spread_structure_gets_exact_pairs():
    """A flat molecule 3000 Å across (vesin's cell grid would collapse at a 4 Å cutoff: the
    process died of SIGFPE) is searched wider and filtered: the brute-force pairs."""
    from mlpot.neighbors import neighbor_pairs

    rng = np.random.default_rng(3)
    positions = np.concatenate([rng.uniform(0, 6, (30, 3)), rng.uniform(0, 3000, (30, 3))])
    positions[:, 2] = 0.0
    i, j, shifts = neighbor_pairs(positions, np.zeros((3, 3)), [False] * 3, 4.0)
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    expected = {(a, b) for a, b in zip(*np.nonzero(distances < 4.0)) if a != b}
    assert set(zip(i.tolist(), j.tolist())) == expected and not shifts.any()


@pytest.mark.parametrize("position, cell, pbc, word", [
    ([1e8, 0, 0], None, False, "positions"),
    ([np.inf, 0, 0], None, False, "positions"),
    ([0, 0, 1.0], np.diag([10.0, 10.0, 1e9]), True, "cell"),
    ([0, 0, 1.0], np.diag([10.0, 10.0, np.nan]), True, "cell"),
])
def test_calculator_refuses_structures_vesin_cannot_search(position, cell, pbc, word):
    from ase import Atoms
    from helpers import random_bpnn

    from mlpot.dynamics.calculator import MlpotCalculator

    atoms = Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], position],
                  cell=cell if cell is not None else np.zeros((3, 3)), pbc=pbc)
    atoms.calc = MlpotCalculator(random_bpnn(0))
    with pytest.raises(MlpotError, match=word):
        atoms.get_potential_energy()


@pytest.mark.parametrize("suffix", [".xyz", ".db", ".npz", ".h5", ".yaml"])
def test_a_folder_or_missing_file_is_named(tmp_path, suffix):
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    for path in (folder, tmp_path / f"missing{suffix}"):
        with pytest.raises(MlpotError) as caught:
            read_everything(path)
        assert str(path) in str(caught.value)


@pytest.mark.parametrize("atom, value, frame", [(17, 0, 1), (40, 300, 2), (3, -7, 0)])
def test_h5_statistics_name_a_frame_with_no_element(files, tmp_path, atom, value, frame):
    """Training's column statistics (elements, compositions) meet the bad number before any
    frame is read: they name its frame too."""
    from mlpot.data.dataset import compositions, elements_of

    path = _edited_h5(files, tmp_path, "z.h5", _set("numbers", atom, value))
    frames = read_frames(path)
    with pytest.raises(MlpotError, match=f"frame {frame}, field 'numbers'"):
        elements_of(frames)
    assert compositions(frames, [1, 6, 8]).sum() == 45 - 1  # the bad atom counts for none
