"""Learned charges and Coulomb: total charge conserved exactly, Madelung constants of NaCl and
CsCl, supercell invariance, Ewald = direct sum up to the images' dipole energy, exact 1/r decay
between separated ions, forces and stress equal finite differences, save/load."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.records import Frame, frame_from_atoms
from mlpot.neighbors import graph_arrays
from mlpot.physics.coulomb import COULOMB_CONSTANT, madelung_energy
from mlpot.physics.charges import _top_targets
from mlpot.physics.electrostatics import Electrostatics
from mlpot.potential import Potential
from helpers import assert_save_load_round_trip, load_as_older_format, random_bpnn

pytest.importorskip("torchpme")
TRICLINIC = np.array([[9.0, 0.0, 0.0], [1.2, 8.5, 0.0], [0.7, -0.9, 9.3]])


def _electrostatic_potential(seed: int = 0, exclusion: float = 3.0) -> Potential:
    """A random bpnn plus random charge network (weights of order one), float64."""
    potential = random_bpnn(seed)
    torch.manual_seed(seed)
    term = Electrostatics([1, 6, 8], cutoff=4.0, exclusion_radius=exclusion).double()
    with torch.no_grad():
        for parameter in term.parameters():
            parameter.normal_(0, 0.5)
    potential.long_range = term
    return potential.eval()


def _periodic(frame: Frame, cell=TRICLINIC) -> Frame:
    return Frame(numbers=frame.numbers, positions=frame.positions, cell=np.asarray(cell),
                 pbc=np.array([True] * 3))


def test_total_charge_is_conserved_exactly(acac_frames):
    potential = _electrostatic_potential()
    frames = [acac_frames[k] for k in range(4)]
    for frame, total in zip(frames, (0.0, 1.0, -2.0, 0.5)):
        frame.charge = total
    batch = potential.batch(frames)
    charges = potential(batch, forces=False)[keys.CHARGES]
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, batch[keys.BATCH], charges)
    torch.testing.assert_close(sums, torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert float(charges.detach().abs().max()) > 0.05  # not trivially zero
    for frame in frames:
        frame.charge = 0.0


@pytest.mark.parametrize("name, madelung, nearest", [
    ("NaCl", 1.747565, lambda a: a / 2), ("CsCl", 1.762675, lambda a: a * np.sqrt(3) / 2)])
def test_madelung_constants(name, madelung, nearest):
    a = 5.64 if name == "NaCl" else 4.12
    crystal = bulk(name, "rocksalt" if name == "NaCl" else "cesiumchloride", a=a)
    charges = [1.0 if z in (11, 55) else -1.0 for z in crystal.numbers]
    energy = madelung_energy(charges, crystal.positions, crystal.cell.array)
    assert -energy * nearest(a) / COULOMB_CONSTANT == pytest.approx(madelung, abs=1e-5)
    bigger = crystal * (2, 1, 3)  # a supercell: 6 times the energy
    charges = [1.0 if z in (11, 55) else -1.0 for z in bigger.numbers]
    assert madelung_energy(charges, bigger.positions, bigger.cell.array) == pytest.approx(
        6 * energy, rel=1e-9)


def test_pme_equals_ewald(acac_frames):
    """Particle-mesh Ewald (large cells) and Ewald agree: NaCl's Madelung constant with PME,
    and learned Gaussian charges in a triclinic 2×2×2 supercell (160 atoms) to 1e-4."""
    crystal = bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2)
    charges = [1.0 if z == 11 else -1.0 for z in crystal.numbers]
    pme = madelung_energy(charges, crystal.positions, crystal.cell.array, pme_from=1)
    assert -pme / len(crystal) * 2 * (5.64 / 2) / COULOMB_CONSTANT == pytest.approx(1.747565,
                                                                                  abs=1e-5)
    frame = _periodic(acac_frames[2])
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
    big = frame_from_atoms(atoms * (2, 2, 2), source="<test>", index=0)
    potential = _electrostatic_potential(5)
    energies = []
    for pme_from in (10**9, 1):
        potential.long_range.coulomb.pme_from = pme_from
        energies.append(float(potential(potential.batch([big]), forces=False)[
            keys.ENERGY_COULOMB][0]))
    assert energies[1] == pytest.approx(energies[0], rel=1e-4)
    assert abs(energies[0]) > 1.0


def test_learned_charges_supercell_invariance(acac_frames):
    potential = _electrostatic_potential(1)
    cell = _periodic(acac_frames[3])
    atoms = Atoms(numbers=cell.numbers, positions=cell.positions, cell=cell.cell, pbc=True)
    big = frame_from_atoms(atoms * (2, 1, 1), source="<test>", index=0)
    one = potential(potential.batch([cell]), forces=False)
    two = potential(potential.batch([big]), forces=False)
    assert float(two[keys.ENERGY_COULOMB][0]) == pytest.approx(
        2 * float(one[keys.ENERGY_COULOMB][0]), rel=1e-8)
    assert abs(float(one[keys.ENERGY_COULOMB][0])) > 1e-3


def test_ewald_approaches_the_direct_sum_in_large_boxes(acac_frames):
    """A neutral molecule in a cubic box of side L differs from the isolated one by the
    interaction with its images, ≈ k μ²/L³ (dipolar lattice sum): it shrinks as L⁻³."""
    potential = _electrostatic_potential(2)
    frame = acac_frames[5]
    isolated = potential(potential.batch([frame]), forces=False)
    mu = float(isolated[keys.DIPOLE][0].norm())
    direct = float(isolated[keys.ENERGY_COULOMB][0])
    gaps = []
    for side in (30.0, 60.0):
        boxed = _periodic(frame, np.eye(3) * side)
        boxed.positions = boxed.positions + side / 2
        ewald = float(potential(potential.batch([boxed]), forces=False)[keys.ENERGY_COULOMB][0])
        gaps.append(abs(ewald - direct))
        assert gaps[-1] < 5 * COULOMB_CONSTANT * mu**2 / side**3
    assert gaps[1] < gaps[0] / 4  # ~ L⁻³
    assert abs(direct) > 1e-3


SIMPLE_CUBIC_MADELUNG = 2.837297  # ξ: E = −k q² ξ / (2L), a charge in a uniform background


@pytest.mark.parametrize("pme_from", [400, 1])
def test_charged_cells_carry_a_neutralising_background(pme_from):
    """A charged cell is summed with a uniform neutralising background (torch-pme's Ewald and
    PME both): one point charge in a cubic box of side L has the Madelung energy
    −k q² ξ/(2L); a charged molecule's periodic energy is the isolated one minus
    k q² ξ/(2L) minus (2πk/3L³)(|p|² − q Σ q_i r_i²), up to O(L⁻⁵): the finite-size
    correction docs/choices.md documents."""
    for side in (8.0, 13.0):
        energy = madelung_energy([2.0], [[1.0, 2.0, 3.0]], np.eye(3) * side, pme_from=pme_from)
        assert energy == pytest.approx(-COULOMB_CONSTANT * 4 * SIMPLE_CUBIC_MADELUNG
                                       / (2 * side), rel=1e-5)
    if pme_from == 1:
        return  # PME's ~1e-5 relative error hides the O(L⁻⁵) remainder below (Ewald only)
    charges = np.array([1.0, -0.8, 0.8, 0.3, -0.3])
    positions = np.array([[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0.2], [0.4, -0.9, 1.0],
                          [-1.0, 0.3, -0.6]])
    i, j = np.triu_indices(len(charges), 1)
    isolated = COULOMB_CONSTANT * np.sum(charges[i] * charges[j]
                                         / np.linalg.norm(positions[i] - positions[j], axis=1))
    total, dipole = charges.sum(), charges @ positions
    # Makov & Payne (PRB 51, 4014 (1995)), tin-foil boundary: the L⁻³ coefficient
    cubic = -2 * np.pi * COULOMB_CONSTANT / 3 * (dipole @ dipole
                                                 - total * charges @ (positions**2).sum(1))
    remainders = []
    for side in (16.0, 32.0):
        periodic = madelung_energy(charges, positions + side / 2, np.eye(3) * side,
                                   real_cutoff=12.0, pme_from=pme_from)
        monopole = COULOMB_CONSTANT * total**2 * SIMPLE_CUBIC_MADELUNG / (2 * side)
        remainders.append((periodic + monopole - isolated) * side**3 - cubic)
    # what is left after the L⁻¹ and L⁻³ terms falls as L⁻⁵
    assert remainders[0] / remainders[1] == pytest.approx(4.0, rel=0.1)
    assert abs(remainders[0]) < 0.2 * abs(cubic)


def test_separated_ions_interact_as_point_charges():
    """Beyond the charge network's cutoff the charges stop changing, so E_coulomb · r is
    constant: the exact 1/r decay (structure-wide charges, random network); with the default
    fragment scheme an ion pair whose formal charges lie nearest ±1 carries exactly ±1 e, so
    E · r = −k_e."""
    for neutrality in ("structure", "fragments"):
        term = Electrostatics([11, 17], cutoff=4.0, exclusion_radius=4.0,
                              neutrality=neutrality).double()
        with torch.no_grad():
            for parameter in term.parameters():
                parameter.normal_(0, 0.5)
            if neutrality == "fragments":
                for symbol, formal in (("Na", 0.7), ("Cl", -0.6)):
                    last = term.charge_head.formal_networks[symbol][-1]
                    last.weight.zero_()
                    last.bias[0] = formal
        products = []
        for r in (8.0, 12.0, 20.0, 30.0):
            frame = Frame(numbers=np.array([11, 17]),
                          positions=np.array([[0, 0, 0], [r, 0, 0.0]]),
                          cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool))
            batch = collate([frame], [graph_arrays(frame.positions, frame.cell, frame.pbc,
                                                   4.0)], dtype=torch.float64)
            out = term(batch)
            products.append(float(out["atomic"].sum()) * r)
            np.testing.assert_allclose(out[keys.CHARGES].sum().item(), 0.0, atol=1e-12)
        np.testing.assert_allclose(products, products[0], rtol=1e-10)
        assert abs(products[0]) > 1e-3
    assert products[0] == pytest.approx(-COULOMB_CONSTANT, rel=1e-12)


@pytest.mark.parametrize("periodic", [False, True])
def test_forces_and_stress_are_finite_differences(acac_frames, periodic):
    potential = _electrostatic_potential(3)
    frame = _periodic(acac_frames[7]) if periodic else acac_frames[7]
    out = potential(potential.batch([frame]), forces=True, stress=periodic)
    forces = out[keys.FORCES].detach().numpy()
    step = 1e-5
    for atom, alpha in ((0, 0), (4, 2), (9, 1)):
        energies = []
        for sign in (1, -1):
            moved = Frame(numbers=frame.numbers, positions=frame.positions.copy(),
                          cell=frame.cell, pbc=frame.pbc)
            moved.positions[atom, alpha] += sign * step
            energies.append(float(potential(potential.batch([moved]), forces=False)[
                keys.ENERGY][0]))
        assert forces[atom, alpha] == pytest.approx(-(energies[0] - energies[1]) / (2 * step),
                                                    abs=1e-6)
    if periodic:
        volume = abs(np.linalg.det(frame.cell))
        strain = np.zeros((3, 3))
        strain[0, 1] = strain[1, 0] = step
        energies = []
        for sign in (1, -1):
            deform = np.eye(3) + sign * strain
            moved = Frame(numbers=frame.numbers, positions=frame.positions @ deform,
                          cell=frame.cell @ deform, pbc=frame.pbc)
            energies.append(float(potential(potential.batch([moved]), forces=False)[
                keys.ENERGY][0]))
        numeric = (energies[0] - energies[1]) / (2 * step) / volume / 2
        assert float(out[keys.STRESS][0, 0, 1]) == pytest.approx(numeric, abs=1e-7)


def test_save_load_round_trip(acac_frames, tmp_path):
    assert_save_load_round_trip(_electrostatic_potential(4), acac_frames[:2], tmp_path,
                                (keys.ENERGY, keys.CHARGES, keys.ENERGY_COULOMB))


def test_older_files_without_neutrality_keep_structure_wide_charges(acac_frames, tmp_path):
    """Files from before version 7 recorded no "neutrality" when it was the structure-wide
    default: they load as "structure" (their predictions unchanged), not as today's default."""
    potential = _electrostatic_potential(5)
    potential.long_range.charge_head.neutrality = "structure"
    potential.long_range.charge_head.formal_networks = None  # "structure" has none
    loaded = load_as_older_format(potential, tmp_path, 6, "long_range", "neutrality")
    assert loaded.long_range.charge_head.neutrality == "structure"
    batch = potential.batch(acac_frames[:2])
    torch.testing.assert_close(loaded(batch, forces=False)[keys.CHARGES],
                               potential(batch, forces=False)[keys.CHARGES], rtol=0, atol=1e-12)


def test_older_fragment_files_round_with_the_raw_charges(acac_frames, tmp_path):
    """Files from before version 9 have no formal networks: their fragments' integers follow
    the raw charges' sums, as they were trained (predictions unchanged)."""
    potential = _electrostatic_potential(5)
    old_style = Electrostatics([1, 6, 8], cutoff=4.0, exclusion_radius=3.0,
                               formal_networks=False).double()
    old_style.load_state_dict({k: v for k, v in potential.long_range.state_dict().items()
                               if not k.startswith("charge_head.formal_networks")})
    potential.long_range = old_style
    loaded = load_as_older_format(potential, tmp_path, 8, "long_range", "formal_networks")
    assert loaded.long_range.charge_head.formal_networks is None
    apart = Frame(numbers=np.r_[acac_frames[0].numbers, acac_frames[1].numbers],
                  positions=np.r_[acac_frames[0].positions, acac_frames[1].positions + 30.0],
                  cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool))
    batch = loaded.batch([apart, acac_frames[1]])
    charges = loaded(batch, forces=False)[keys.CHARGES]
    torch.testing.assert_close(charges, potential(batch, forces=False)[keys.CHARGES],
                               rtol=0, atol=1e-12)
    n = len(acac_frames[0])
    labels, structure = np.r_[np.zeros(n), np.ones(n), np.full(n, 2)].astype(int), \
        np.r_[np.zeros(2 * n), np.ones(n)].astype(int)

    def integers(values):  # the fragments' integers from per-atom values (the scheme's rule)
        return _top_targets(labels, values.detach().numpy()[:, 0], structure, np.zeros(2))

    raw = old_style.charge_head.raw_outputs(batch)
    assert float(charges[:n].sum()) == pytest.approx(integers(raw)[0], abs=1e-9)


def test_training_with_coulomb_and_the_calculator(acac_dir, tmp_path):
    """`model.long_range: coulomb` trains (energies and forces only), saves, loads, and the
    ASE calculator reports charges, dipole and the energy split."""
    from mlpot.config import config_from_dict
    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.train.run import run_training

    config = config_from_dict({"data": {"train": str(acac_dir / "train_300K.xyz"),
                                        "isolated_atoms": str(acac_dir / "isolated_atoms.xyz"),
                                        "max_train": 40},
                               "model": {"kind": "bpnn", "size": "small",
                                         "long_range": "coulomb"},
                               "training": {"max_epochs": 2, "threads": 1},
                               "out": str(tmp_path / "run")})
    summary = run_training(config, progress=False)
    assert summary["metrics"]["valid"]["force_rmse"] > 0
    atoms = read_acac(acac_dir)
    atoms.calc = MlpotCalculator(str(tmp_path / "run" / "model"))
    energy = atoms.get_potential_energy()
    results = atoms.calc.results
    assert results["charges"].shape == (len(atoms),)
    assert abs(results["charges"].sum()) < 1e-9
    np.testing.assert_allclose(results["dipole"],
                               (results["charges"][:, None] * atoms.positions).sum(0), atol=1e-9)
    terms = results["energy_terms"]
    assert terms["short"] + terms["coulomb"] == pytest.approx(energy, abs=1e-9)


def read_acac(acac_dir):
    from ase.io import read

    return read(acac_dir / "test_MD_300K.xyz", index=0)


@pytest.mark.parametrize("label", ["dipole", "charges"])
def test_reference_dipoles_or_charges_train_the_charges(acac_dir, tmp_path, label):
    """Frames carrying the dipoles, or the atomic charges themselves, of known fixed charges
    (H +0.1, O −0.6, C +0.08 e; neutral): training with the dipole or the charge loss term
    brings the learned charges' dipoles (charges) to them."""
    from ase.io import read, write

    from mlpot.config import config_from_dict
    from mlpot.data.records import read_frames
    from mlpot.serialize import load
    from mlpot.train.run import run_training

    fixed = {1: 0.1, 6: 0.08, 8: -0.6}
    frames = read(acac_dir / "train_300K.xyz", index=":60")
    for atoms in frames:
        q = np.array([fixed[z] for z in atoms.numbers])
        if label == "dipole":
            atoms.info["dipole"] = (q[:, None] * atoms.positions).sum(0)
        else:
            atoms.arrays["charges"] = q
    write(tmp_path / "labelled.xyz", frames)

    def rmse_of(model_dir):
        potential = load(model_dir)
        test = read_frames(tmp_path / "labelled.xyz")[-10:]
        out = potential(potential.batch(test), forces=False)
        if label == "dipole":
            error = out[keys.DIPOLE].detach().numpy() - np.stack([f.dipole for f in test])
        else:
            error = (out[keys.CHARGES].detach().numpy()
                     - np.concatenate([f.partial_charges for f in test]))
        return float(np.sqrt(np.mean(error**2)))

    rmse = {}
    for epochs in (1, 40):
        out = tmp_path / f"run{epochs}"
        config = config_from_dict({"data": {"train": str(tmp_path / "labelled.xyz"),
                                            "isolated_atoms": str(acac_dir / "isolated_atoms.xyz"),
                                            "valid_fraction": 0.2},
                                   "model": {"kind": "bpnn", "size": "small",
                                             "long_range": "coulomb"},
                                   "training": {"max_epochs": epochs, "threads": 1,
                                                "learning_rate": 5e-3, "sigma_dipole": 0.005,
                                                "sigma_charge": 0.005},
                                   "out": str(out)})
        run_training(config, progress=False)
        rmse[epochs] = rmse_of(out / "model")
    assert rmse[40] < 0.3 * rmse[1], rmse
