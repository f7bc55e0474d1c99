"""Reading, validating and splitting reference data (mlpot.data.records / dataset / batch).

Every check compares against something computed without mlpot: ASE's own readers, numpy,
hand-edited real files.
"""

from collections import Counter
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.dataset import (fit_reference_energies, isolated_atom_energies,
                                reference_energies, split_indices, split_isolated_atoms)
from mlpot.data.records import check_elements, read_frames
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.errors import DataError
from mlpot.models import LinearModel
from mlpot.neighbors import graph_arrays
from mlpot.potential import Potential

N_ACAC = 15  # atoms per acac frame
LINES = N_ACAC + 2  # lines per frame in the extxyz files


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids contention on a busy 2-core machine
    torch.set_num_threads(1)
    yield


def _ase_frames(path, n):
    """The first n frames as ASE reads them, with energies and forces as plain arrays."""
    atoms_list = ase.io.read(path, index=f":{n}")
    return [(a, a.get_potential_energy(), a.get_forces()) for a in atoms_list]


def _head_lines(path, n_frames):
    """The raw text lines of the first n_frames frames of an acac extxyz file."""
    with open(path) as handle:
        return [next(handle).rstrip("\n") for _ in range(n_frames * LINES)]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_names(error: DataError, path, frame, field):
    message = str(error)
    assert str(path) in message
    assert f"frame {frame}" in message
    if field is not None:
        assert f"'{field}'" in message
    assert (error.source, error.frame) == (str(path), frame)
    if field is not None:
        assert error.field == field


# -- readers ---------------------------------------------------------------------------------

def test_extxyz_default_keys_come_from_attached_calculator(acac_dir):
    path = acac_dir / "train_300K.xyz"
    reference = _ase_frames(path, 5)
    assert isinstance(reference[0][0].calc, SinglePointCalculator)  # ASE moved labels there
    frames = read_frames(path)
    assert len(frames) == 500
    for frame, (atoms, energy, forces) in zip(frames, reference):
        assert frame.energy == energy
        np.testing.assert_array_equal(frame.forces, forces)
        np.testing.assert_array_equal(frame.positions, atoms.positions)
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        assert frame.source == str(path)
    assert [f.index for f in frames[:5]] == list(range(5))
    assert frames[0].config_type == "300K_MD"


def test_extxyz_custom_keys(acac_dir, tmp_path):
    reference = _ase_frames(acac_dir / "train_300K.xyz", 4)
    written = []
    for atoms, energy, forces in reference:
        atoms = atoms.copy()  # no calculator: labels only under the custom names
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces.copy()
        written.append(atoms)
    path = tmp_path / "ref.xyz"
    ase.io.write(path, written, format="extxyz")
    text = path.read_text()
    assert "REF_energy=" in text and "REF_forces:R:3" in text and " energy=" not in text

    frames = read_frames(path, energy_key="REF_energy", forces_key="REF_forces")
    for frame, (_, energy, forces) in zip(frames, reference):
        assert frame.energy == pytest.approx(energy, abs=1e-9)
        np.testing.assert_allclose(frame.forces, forces, atol=1e-8)
    # the default keys do not find them
    with pytest.raises(DataError) as info:
        read_frames(path)
    _assert_names(info.value, path, 0, "energy")


def test_ase_database_equals_extxyz(acac_dir, tmp_path):
    reference = _ase_frames(acac_dir / "train_300K.xyz", 6)
    path = tmp_path / "frames.db"
    with ase.db.connect(str(path)) as db:
        for atoms, energy, forces in reference:
            atoms = atoms.copy()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            db.write(atoms, config_type="300K_MD")
    frames = read_frames(path)
    assert len(frames) == 6
    for k, (frame, (atoms, energy, forces)) in enumerate(zip(frames, reference)):
        assert frame.energy == energy
        np.testing.assert_array_equal(frame.forces, forces)
        np.testing.assert_array_equal(frame.positions, atoms.positions)
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        assert frame.config_type == "300K_MD"
        assert (frame.source, frame.index) == (str(path), k)


def test_ase_database_custom_keys(acac_dir, tmp_path):
    reference = _ase_frames(acac_dir / "train_300K.xyz", 3)
    path = tmp_path / "custom.db"
    with ase.db.connect(str(path)) as db:
        for atoms, energy, forces in reference:
            db.write(atoms.copy(), key_value_pairs={"REF_energy": energy},
                     data={"REF_forces": forces})
    frames = read_frames(path, energy_key="REF_energy", forces_key="REF_forces")
    for frame, (_, energy, forces) in zip(frames, reference):
        assert frame.energy == energy
        np.testing.assert_array_equal(frame.forces, forces)


def _tiny_npz(path, n_frames=3, forces_shape=None):
    rng = np.random.default_rng(0)
    numbers = np.array([8, 1, 1], dtype=np.uint8)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    coords = base + 0.02 * rng.standard_normal((n_frames, 3, 3))
    energies = np.array([-47000.0, -47000.5, -46999.25][:n_frames])  # kcal/mol
    forces = rng.standard_normal(forces_shape or (n_frames, 3, 3)) * 10  # kcal/mol/Å
    np.savez(path, nuclear_charges=numbers, coords=coords, energies=energies, forces=forces)
    return numbers, coords, energies, forces


def test_rmd17_npz_converts_kcal_per_mol_to_ev(tmp_path):
    path = tmp_path / "tiny.npz"
    numbers, coords, energies, forces = _tiny_npz(path)
    frames = read_frames(path)
    kcal = units.kcal / units.mol
    assert kcal * 1000 == pytest.approx(43.364, abs=5e-4)  # meV per kcal/mol
    assert len(frames) == 3
    for k, frame in enumerate(frames):
        assert frame.energy == pytest.approx(energies[k] * 0.0433641, rel=1e-6)
        assert frame.energy == pytest.approx(energies[k] * kcal, rel=1e-12)
        np.testing.assert_allclose(frame.forces, forces[k] * kcal, rtol=1e-12)
        np.testing.assert_array_equal(frame.positions, coords[k])
        np.testing.assert_array_equal(frame.numbers, [8, 1, 1])
        assert not frame.pbc.any() and frame.index == k


RMD17 = Path("/work/shared/data/rmd17/rmd17_ethanol_train_01.npz")


@pytest.mark.skipif(not RMD17.exists(), reason="rMD17 data not present")
def test_rmd17_real_file():
    frames = read_frames(RMD17)
    assert len(frames) == 1000
    with np.load(RMD17) as data:
        raw_e, raw_f = data["energies"], data["forces"]
        np.testing.assert_array_equal(frames[0].numbers, data["nuclear_charges"])
    kcal = units.kcal / units.mol
    for k in (0, 499, 999):
        assert frames[k].energy == pytest.approx(raw_e[k] * kcal, rel=1e-12)
        np.testing.assert_allclose(frames[k].forces, raw_f[k] * kcal, rtol=1e-12)
    assert Counter(frames[0].numbers.tolist()) == {6: 2, 8: 1, 1: 6}  # ethanol
    # ethanol near -97 000 kcal/mol ≈ -4209 eV
    assert -4300 < frames[0].energy < -4100


# -- energy-only frames ---------------------------------------------------------------------

def test_frames_without_forces_train_on_energy(acac_dir, acac_frames):
    path = acac_dir / "test_H_transfer.xyz"
    frames = read_frames(path)
    assert len(frames) == 15
    assert all(f.forces is None and f.energy is not None for f in frames)
    reference = ase.io.read(path, index=":")
    assert [f.energy for f in frames] == [a.get_potential_energy() for a in reference]

    potential = _tiny_potential([1, 6, 8])
    only_energy = potential.batch(frames[:3])
    assert keys.FORCES not in only_energy and keys.ENERGY in only_energy
    mixed = potential.batch([frames[0], acac_frames[0], frames[1]])
    assert mixed[keys.HAS_FORCES].tolist() == [False, True, False]
    np.testing.assert_array_equal(mixed[keys.FORCES][N_ACAC:2 * N_ACAC].numpy(),
                                  acac_frames[0].forces)

    # fitting on energies alone (no force rows) lowers the energy loss of these frames
    from mlpot.data.dataset import fit_reference_energies
    from mlpot.train.loss import EnergyForceLoss
    from mlpot.train.ridge import fit_linear

    potential = _tiny_potential([1, 6, 8], fit_reference_energies(frames, [1, 6, 8]))
    loss_fn = EnergyForceLoss(sigma_energy=0.001)
    batch = potential.batch(frames)

    def loss():
        value, parts = loss_fn(potential(batch, forces=True, create_graph=False), batch)
        assert set(parts) == {"energy"}
        return float(value.detach())

    before = loss()
    fit_linear(potential, frames, sigma_force=None, ridge=1e-6)
    assert loss() < 0.1 * before


# -- isolated atoms and E0 -------------------------------------------------------------------

def test_isolated_atoms_give_e0(acac_dir, acac_frames, tmp_path):
    path = acac_dir / "isolated_atoms.xyz"
    isolated = read_frames(path)
    assert all(f.is_isolated_atom and f.config_type == "isolated_atom" for f in isolated)
    expected = {chemical_symbols[a.numbers[0]]: a.info["energy"] if "energy" in a.info
                else a.get_potential_energy() for a in ase.io.read(path, index=":")}
    assert set(expected) == {"H", "C", "O"}
    assert isolated_atom_energies(isolated) == pytest.approx(expected)
    e0, source = reference_energies(acac_frames[:10], [1, 6, 8], isolated)
    assert source == "isolated atoms" and e0 == pytest.approx(expected)

    # mixed into a training file, they are found by config_type and set apart
    mixed_path = tmp_path / "mixed.xyz"
    mixed_path.write_text(path.read_text() + "\n".join(
        _head_lines(acac_dir / "train_300K.xyz", 3)) + "\n")
    found, rest = split_isolated_atoms(read_frames(mixed_path))
    assert len(found) == 3 and len(rest) == 3
    assert all(len(f) == N_ACAC for f in rest)

    # a single atom in a periodic cell is a crystal, not an isolated atom, unless labelled
    bulk = Atoms("Cu", cell=np.eye(3) * 2.5, pbc=True)
    bulk.calc = SinglePointCalculator(bulk, energy=-3.5)
    labelled = Atoms("Cu", cell=np.eye(3) * 20, pbc=True)
    labelled.info["config_type"] = "IsolatedAtom"
    labelled.calc = SinglePointCalculator(labelled, energy=-0.2)
    ase.io.write(tmp_path / "cu.xyz", [bulk, labelled])
    cu = read_frames(tmp_path / "cu.xyz")
    assert [f.is_isolated_atom for f in cu] == [False, True]


def test_e0_least_squares_equals_numpy(tmp_path):
    rng = np.random.default_rng(1)
    true_e0 = {"H": -13.6, "C": -1030.0, "N": -1485.0, "O": -2040.0}
    names = ["H2O", "CH4", "NH3", "CO2", "C2H6", "CH3OH", "HCN", "N2", "H2", "CH3CHO",
             "C2H4", "NO2"]
    structures = []
    for name in names:
        atoms = molecule(name)
        atoms.center(vacuum=5.0)
        energy = sum(true_e0[s] for s in atoms.get_chemical_symbols()) + rng.normal(0, 0.5)
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
        structures.append(atoms)
    path = tmp_path / "molecules.xyz"
    ase.io.write(path, structures)
    frames = read_frames(path)
    elements = [1, 6, 7, 8]
    e0, source = reference_energies(frames, elements, isolated=[])
    assert source == "least-squares fit"

    # independent: composition matrix from ASE's symbols, numpy least squares
    order = ["H", "C", "N", "O"]
    counts = np.array([[Counter(a.get_chemical_symbols())[s] for s in order]
                       for a in structures], dtype=float)
    energies = np.array([a.get_potential_energy() for a in structures])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    assert [e0[s] for s in order] == pytest.approx(solution, rel=1e-10)
    assert [e0[s] for s in order] == pytest.approx([true_e0[s] for s in order], abs=1.0)
    # isolated atoms covering only some elements: those kept, the others fitted to the rest
    h_atom = frames[0].__class__(numbers=np.array([1]), positions=np.zeros((1, 3)),
                                 cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=-13.0)
    partial, source = reference_energies(frames, elements, [h_atom])
    assert source == "isolated atoms (H) and a least-squares fit (C, N, O)"
    assert partial["H"] == -13.0
    rest = np.linalg.lstsq(counts[:, 1:], energies - counts[:, 0] * -13.0, rcond=None)[0]
    assert [partial[s] for s in order[1:]] == pytest.approx(rest, rel=1e-10)
    assert fit_reference_energies(frames, elements) == pytest.approx(e0)


# -- splits ----------------------------------------------------------------------------------

def test_seeded_splits_reproducible_and_disjoint():
    first = split_indices(200, (0.1, 0.2), seed=7)
    again = split_indices(200, (0.1, 0.2), seed=7)
    other = split_indices(200, (0.1, 0.2), seed=8)
    assert [len(p) for p in first] == [20, 40, 140]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    union = np.concatenate(first)
    assert len(set(union.tolist())) == 200 and sorted(union.tolist()) == list(range(200))
    # a tiny fraction still gets one item
    assert [len(p) for p in split_indices(10, (0.01,), seed=0)] == [1, 9]


def test_run_split_of_training_file_is_disjoint(acac_dir):
    from mlpot.config import config_from_dict
    from mlpot.train.run import load_data

    config = config_from_dict({"data": {"train": str(acac_dir / "train_300K.xyz"),
                                        "valid_fraction": 0.1}, "seed": 3})
    one, two = load_data(config), load_data(config)
    assert len(one["valid"]) == 50 and len(one["train"]) == 450
    ids = lambda frames: [f.index for f in frames]  # noqa: E731
    assert ids(one["valid"]) == ids(two["valid"]) and ids(one["train"]) == ids(two["train"])
    assert not set(ids(one["valid"])) & set(ids(one["train"]))


# -- bad input -------------------------------------------------------------------------------

@pytest.fixture()
def acac_lines(acac_dir):
    return _head_lines(acac_dir / "train_300K.xyz", 4)


def _header(lines, frame):
    return frame * LINES + 1


def _atom_line(lines, frame, atom):
    return frame * LINES + 2 + atom


def test_truncated_file_names_file_and_frame(acac_lines, tmp_path):
    path = _write(tmp_path / "truncated.xyz", acac_lines[:3 * LINES + 9])  # frame 3 cut short
    with pytest.raises(DataError) as info:
        read_frames(path)
    _assert_names(info.value, path, 3, None)


def test_garbage_line_names_file_and_frame(acac_lines, tmp_path):
    lines = list(acac_lines)
    lines[_atom_line(lines, 2, 4)] = "C  0.1 0.2 zero 0.0 0.0 0.0"
    path = _write(tmp_path / "garbage.xyz", lines)
    with pytest.raises(DataError) as info:
        read_frames(path)
    _assert_names(info.value, path, 2, None)


def test_missing_energy(acac_lines, tmp_path):
    lines = list(acac_lines)
    header = lines[_header(lines, 2)]
    lines[_header(lines, 2)] = " ".join(w for w in header.split(" ")
                                        if not w.startswith("energy="))
    assert "energy=" not in lines[_header(lines, 2)]
    path = _write(tmp_path / "noenergy.xyz", lines)
    with pytest.raises(DataError, match="missing") as info:
        read_frames(path)
    _assert_names(info.value, path, 2, "energy")
    # energy-optional reading accepts it
    assert read_frames(path, require_energy=False)[2].energy is None


def test_nan_energy(acac_lines, tmp_path):
    lines = list(acac_lines)
    header = lines[_header(lines, 1)]
    lines[_header(lines, 1)] = " ".join("energy=nan" if w.startswith("energy=") else w
                                        for w in header.split(" "))
    path = _write(tmp_path / "nanenergy.xyz", lines)
    with pytest.raises(DataError, match="nan") as info:
        read_frames(path)
    _assert_names(info.value, path, 1, "energy")


def test_nan_forces(acac_lines, tmp_path):
    lines = list(acac_lines)
    words = lines[_atom_line(lines, 3, 7)].split()
    words[5] = "nan"  # y force of atom 7
    lines[_atom_line(lines, 3, 7)] = "  ".join(words)
    path = _write(tmp_path / "nanforces.xyz", lines)
    with pytest.raises(DataError, match="NaN") as info:
        read_frames(path)
    _assert_names(info.value, path, 3, "forces")


def test_wrong_forces_shape_in_database(acac_dir, tmp_path):
    reference = _ase_frames(acac_dir / "train_300K.xyz", 3)
    path = tmp_path / "badforces.db"
    with ase.db.connect(str(path)) as db:
        for k, (atoms, energy, forces) in enumerate(reference):
            stored = forces[:-1] if k == 2 else forces  # frame 2 lacks one atom's forces
            db.write(atoms.copy(), key_value_pairs={"energy_ref": energy},
                     data={"forces": stored})
    with pytest.raises(DataError, match=r"\(14, 3\)") as info:
        read_frames(path, energy_key="energy_ref")
    _assert_names(info.value, path, 2, "forces")


def test_wrong_forces_shape_in_npz(tmp_path):
    path = tmp_path / "badforces.npz"
    _tiny_npz(path, forces_shape=(3, 4, 3))
    with pytest.raises(DataError) as info:
        read_frames(path)
    _assert_names(info.value, path, 0, "forces")


def _tiny_potential(elements, e0=None):
    descriptor = SymmetryFunctions(elements, cutoff=4.0, radial=default_radial(4.0, 3),
                                   angular=default_angular(4.0, 1, (1.0,)))
    e0 = e0 or {chemical_symbols[z]: -1.0 for z in elements}
    return Potential(LinearModel(descriptor), e0)


def test_unknown_element(acac_lines, tmp_path):
    lines = list(acac_lines)
    for atom in range(N_ACAC):  # frame 2: every O becomes S
        line = lines[_atom_line(lines, 2, atom)]
        if line.split()[0] == "O":
            lines[_atom_line(lines, 2, atom)] = "S" + line[1:]
    path = _write(tmp_path / "sulfur.xyz", lines)
    frames = read_frames(path)  # sulfur is a valid element
    check_elements(frames, [1, 6, 8, 16])
    with pytest.raises(DataError, match="S") as info:
        check_elements(frames, [1, 6, 8])
    _assert_names(info.value, path, 2, "numbers")
    potential = _tiny_potential([1, 6, 8])
    potential.batch(frames[:2])
    with pytest.raises(DataError, match="unknown") as info:
        potential.batch(frames)
    _assert_names(info.value, path, 2, "numbers")


def test_atoms_too_close(acac_dir, tmp_path):
    atoms_list = [a.copy() for a, _, _ in _ase_frames(acac_dir / "train_300K.xyz", 3)]
    for atoms in atoms_list:
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((N_ACAC, 3)))
    positions = atoms_list[1].positions.copy()
    positions[9] = positions[4] + [0.03, 0.04, 0.0]  # 0.05 Å apart
    atoms_list[1].positions = positions
    atoms_list[1].calc = SinglePointCalculator(atoms_list[1], energy=-1.0,
                                               forces=np.zeros((N_ACAC, 3)))
    path = tmp_path / "close.xyz"
    ase.io.write(path, atoms_list)
    with pytest.raises(DataError, match="0.05") as info:
        read_frames(path)
    _assert_names(info.value, path, 1, "positions")


def test_atoms_too_close_across_periodic_boundary(tmp_path):
    cell = np.eye(3) * 6.0
    fine = Atoms("H2O", positions=[[1.0, 1.0, 1.0], [1.7, 1.0, 1.0], [3.0, 3.0, 3.0]],
                 cell=cell, pbc=True)
    # 0.03 Å from the lower face and 0.04 Å from the upper face: 0.07 Å apart through it
    close = Atoms("H2O", positions=[[0.03, 2.0, 2.0], [5.96, 2.0, 2.0], [3.0, 3.0, 3.0]],
                  cell=cell, pbc=True)
    for atoms in (fine, close):
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=np.zeros((3, 3)))
    path = tmp_path / "periodic.xyz"
    ase.io.write(path, [fine, close])
    with pytest.raises(DataError, match="0.07") as info:
        read_frames(path)
    _assert_names(info.value, path, 1, "positions")
    # the same positions without periodicity are 5.93 Å apart and fine
    close.pbc = False
    close.calc = SinglePointCalculator(close, energy=-10.0, forces=np.zeros((3, 3)))
    ase.io.write(tmp_path / "open.xyz", [close])
    assert len(read_frames(tmp_path / "open.xyz")) == 1


def test_collate_offsets_edges(acac_frames):
    """The batch is one disjoint graph: edges of structure b point into b's atoms only."""
    frames = acac_frames[:3]
    graphs = [graph_arrays(f.positions, f.cell, f.pbc, 4.0) for f in frames]
    batch = collate(frames, graphs)
    owner = batch[keys.BATCH][batch[keys.EDGE_INDEX]]
    assert torch.equal(owner[0], owner[1])
    assert batch[keys.N_ATOMS].tolist() == [N_ACAC] * 3
    assert batch[keys.ENERGY].tolist() == [f.energy for f in frames]
