"""Learned dispersion: a brute-force pair sum of the documented formula, the exact −C6/r⁶
asymptote of separated fragments, Tkatchenko–Scheffler combination of free-atom values,
supercell invariance in cells, forces and stress equal finite differences, save/load."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_stress
from ase.calculators.vdwcorrection import vdWDB_alphaC6
from ase.data import vdw_radii
from ase.units import Bohr, Hartree

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.records import Frame, frame_from_atoms
from mlpot.neighbors import graph_arrays
from mlpot.physics.dispersion import Dispersion
from mlpot.potential import Potential
from helpers import assert_save_load_round_trip, load_as_older_format, random_bpnn

TRICLINIC = np.array([[9.0, 0.0, 0.0], [1.2, 8.5, 0.0], [0.7, -0.9, 9.3]])


def _term(elements=(1, 6, 8), seed=0, cutoff=4.0, **kwargs) -> Dispersion:
    torch.manual_seed(seed)
    term = Dispersion(list(elements), cutoff=cutoff, **kwargs).double()
    with torch.no_grad():
        for parameter in term.volume_head.parameters():
            parameter.normal_(0, 0.3)
    return term


def _batch(frame: Frame, cutoff=4.0):
    return collate([frame], [graph_arrays(frame.positions, frame.cell, frame.pbc, cutoff)],
                   dtype=torch.float64)


def _molecule(numbers, positions) -> Frame:
    return Frame(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=float),
                 cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool))


def _brute_force(numbers, positions, volumes, scale) -> float:
    """The module docstring's formula, pair by pair in numpy from ASE's tables."""
    energy = 0.0
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            (a_i, c_i), (a_j, c_j) = (vdWDB_alphaC6[Atoms(numbers=[z]).get_chemical_symbols()[0]]
                                      for z in (numbers[i], numbers[j]))
            a_i, a_j = a_i * volumes[i], a_j * volumes[j]
            c_i, c_j = c_i * volumes[i] ** 2, c_j * volumes[j] ** 2
            c6 = 2 * c_i * c_j / (a_j / a_i * c_i + a_i / a_j * c_j) * Hartree * Bohr**6
            radius = scale * (vdw_radii[numbers[i]] * volumes[i] ** (1 / 3)
                              + vdw_radii[numbers[j]] * volumes[j] ** (1 / 3))
            r = np.linalg.norm(positions[i] - positions[j])
            energy -= c6 / (r**6 + radius**6)
    return energy


def test_energy_is_the_documented_pair_sum(acac_frames):
    term = _term()
    frame = acac_frames[5]
    out = term(_batch(frame))
    volumes = out["volume_ratios"].detach().numpy()
    assert volumes.std() > 0.05  # the learned volumes differ between atoms
    expected = _brute_force(frame.numbers, frame.positions, volumes,
                            float(term.damping_log_scale.detach().exp()))
    assert float(out["atomic"].sum()) == pytest.approx(expected, rel=1e-10)


def test_free_atoms_combine_as_tkatchenko_scheffler():
    """Untrained heads are constant per element: with the volume head's last layer zero,
    v = 1 and two far-apart atoms attract with the free-atom C6 of ASE's table."""
    term = _term((6, 8))
    with torch.no_grad():
        for network in term.volume_head.networks.values():
            network[-1].weight.zero_()
            network[-1].bias.zero_()
    r = 25.0
    out = term(_batch(_molecule([6, 8], [[0, 0, 0], [r, 0, 0]])))
    np.testing.assert_allclose(out["volume_ratios"].detach().numpy(), 1.0, rtol=1e-12)
    (a_c, c_c), (a_o, c_o) = vdWDB_alphaC6["C"], vdWDB_alphaC6["O"]
    c6 = 2 * c_c * c_o / (a_o / a_c * c_c + a_c / a_o * c_o) * Hartree * Bohr**6
    assert float(out["atomic"].sum()) == pytest.approx(-c6 / r**6, rel=1e-6)


def test_separated_fragments_decay_as_r6():
    """Beyond the volume network's cutoff the volumes stop changing: E · r⁶ → −C6 of the
    molecule (Σ_ij C6_ij over the two methanes' atoms; the damping fades as (R/r)⁶)."""
    term = _term((1, 6))
    methane = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                        [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    numbers = [6, 1, 1, 1, 1] * 2
    isolated = float(term(_batch(_molecule(numbers[:5], methane)))["atomic"].sum())
    products = []
    for r in (10.0, 15.0, 20.0, 30.0):
        positions = np.vstack([methane, methane + [0, 0, r]])
        energy = float(term(_batch(_molecule(numbers, positions)))["atomic"].sum())
        products.append((energy - 2 * isolated) * r**6)
    assert products[0] < 0
    # the pair distances spread about r (±1.3 Å), so E·r⁶ = −C6 + b/r² + O(r⁻⁴): the limit
    # extrapolated from 20 and 30 Å is the molecular C6 of the isolated volumes
    np.testing.assert_allclose(products[1:], products[-1], rtol=0.05)
    limit = (products[3] * 30.0**2 - products[2] * 20.0**2) / (30.0**2 - 20.0**2)
    v = term.volume_ratios(_batch(_molecule(numbers[:5], methane)))
    i, j = (torch.as_tensor(a.ravel()) for a in np.meshgrid(range(5), range(5), indexing="ij"))
    c6 = float(term.pair_c6(v, torch.as_tensor(numbers[:5]), i, j).sum())
    assert limit == pytest.approx(-c6, rel=2e-3)


def _dispersion_potential(seed=2) -> Potential:
    potential = random_bpnn(seed)
    potential.dispersion = _term(seed=seed, pair_cutoff=10.0, switch_width=2.0)
    return potential.eval()


def test_supercell_invariance(acac_frames):
    potential = _dispersion_potential()
    frame = acac_frames[3]
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=TRICLINIC, pbc=True)
    one = potential(potential.batch([frame_from_atoms(atoms, source="<t>", index=0)]),
                    forces=False)
    big = frame_from_atoms(atoms * (1, 2, 2), source="<t>", index=0)
    four = potential(potential.batch([big]), forces=False)
    assert float(four[keys.ENERGY_DISPERSION][0]) == pytest.approx(
        4 * float(one[keys.ENERGY_DISPERSION][0]), rel=1e-9)
    assert float(one[keys.ENERGY_DISPERSION][0]) < -0.1


@pytest.mark.parametrize("periodic", [False, True])
def test_forces_and_stress_are_finite_differences(acac_frames, periodic):
    potential = _dispersion_potential(3)
    frame = acac_frames[7]
    if periodic:
        frame = Frame(numbers=frame.numbers, positions=frame.positions, cell=TRICLINIC,
                      pbc=np.array([True] * 3))
    out = potential(potential.batch([frame]), forces=True, stress=periodic)
    forces = out[keys.FORCES].detach().numpy()

    def energy(positions, cell):
        moved = Frame(numbers=frame.numbers, positions=positions, cell=cell, pbc=frame.pbc)
        return float(potential(potential.batch([moved]), forces=False)[keys.ENERGY][0])

    step = 1e-5
    for atom, alpha in ((0, 0), (4, 2), (9, 1)):
        shifted = [frame.positions.copy() for _ in range(2)]
        shifted[0][atom, alpha] += step
        shifted[1][atom, alpha] -= step
        numeric = -(energy(shifted[0], frame.cell) - energy(shifted[1], frame.cell)) / (2 * step)
        assert forces[atom, alpha] == pytest.approx(numeric, abs=1e-6)
    if periodic:
        volume = abs(np.linalg.det(frame.cell))
        for a, b in ((0, 0), (0, 1), (2, 1)):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = step
            plus, minus = np.eye(3) + strain, np.eye(3) - strain
            numeric = (energy(frame.positions @ plus, frame.cell @ plus)
                       - energy(frame.positions @ minus, frame.cell @ minus)) / (2 * step)
            numeric /= volume * (1 if a == b else 2)
            assert float(out[keys.STRESS][0, a, b]) == pytest.approx(numeric, abs=1e-7)


def test_missing_free_atom_data_is_a_clear_error():
    with pytest.raises(ValueError, match="Og"):
        Dispersion([1, 118], cutoff=4.0)


def test_save_load_round_trip(acac_frames, tmp_path):
    assert_save_load_round_trip(_dispersion_potential(4), acac_frames[:2], tmp_path,
                                (keys.ENERGY, keys.ENERGY_DISPERSION, keys.VOLUME_RATIOS))


def test_older_files_keep_g2_volume_inputs(acac_frames, tmp_path):
    """Files from before version 8 recorded no "volume_features" when the volume head read
    G2 functions: they load as "g2" with the same energies, not as today's default."""
    potential = random_bpnn(5)
    potential.dispersion = _term(seed=5, volume_features="g2")
    potential.eval()
    loaded = load_as_older_format(potential, tmp_path, 7, "dispersion", "volume_features")
    assert loaded.dispersion.volume_head.features == "g2"
    batch = potential.batch(acac_frames[:2])
    torch.testing.assert_close(loaded(batch, forces=False)[keys.ENERGY_DISPERSION],
                               potential(batch, forces=False)[keys.ENERGY_DISPERSION],
                               rtol=0, atol=1e-12)


def _train(acac_dir, tmp_path, **model) -> str:
    from mlpot.config import config_from_dict
    from mlpot.train.run import run_training

    config = config_from_dict({"data": {"train": str(acac_dir / "train_300K.xyz"),
                                        "isolated_atoms": str(acac_dir / "isolated_atoms.xyz"),
                                        "max_train": 40},
                               "model": {"kind": "bpnn", "size": "small", **model},
                               "training": {"max_epochs": 2, "threads": 1},
                               "out": str(tmp_path / "run")})
    summary = run_training(config, progress=False)
    assert summary["metrics"]["valid"]["force_rmse"] > 0
    return str(tmp_path / "run" / "model")


def test_training_with_both_terms_and_the_energy_split(acac_dir, tmp_path):
    from ase.io import read

    from mlpot.dynamics.calculator import MlpotCalculator

    atoms = read(acac_dir / "test_MD_300K.xyz", index=0)
    atoms.calc = MlpotCalculator(_train(acac_dir, tmp_path, long_range="both"))
    energy = atoms.get_potential_energy()
    terms = atoms.calc.results["energy_terms"]
    assert set(terms) == {"short", "coulomb", "dispersion"}
    assert sum(terms.values()) == pytest.approx(energy, abs=1e-9)
    assert terms["dispersion"] < 0
    assert abs(atoms.calc.results["charges"].sum()) < 1e-9


def test_d3_correction_is_added_to_a_model_of_dispersion_free_labels(acac_dir, tmp_path):
    """A model trained with dispersion_correction d3 (PBE) records it; the calculator adds
    simple-dftd3's energy, forces and stress to the bare model's, and the sum's stress is the
    strain derivative of the sum's energy."""
    pytest.importorskip("dftd3")
    from ase.io import read
    from dftd3.ase import DFTD3

    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.serialize import load

    path = _train(acac_dir, tmp_path, dispersion_correction="d3", xc_functional="pbe")
    atoms = read(acac_dir / "test_MD_300K.xyz", index=0)
    atoms.set_cell(TRICLINIC + 3 * np.eye(3))
    atoms.pbc = True
    corrected, bare, d3 = (atoms.copy() for _ in range(3))
    corrected.calc = MlpotCalculator(path)
    bare.calc = MlpotCalculator(load(path))
    d3.calc = DFTD3(method="pbe", damping="d3bj")
    assert corrected.get_potential_energy() == pytest.approx(
        bare.get_potential_energy() + d3.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(corrected.get_forces(), bare.get_forces() + d3.get_forces(),
                               atol=1e-9)
    np.testing.assert_allclose(corrected.get_stress(), bare.get_stress() + d3.get_stress(),
                               atol=1e-10)
    assert corrected.calc.results["energy_terms"]["dispersion"] == pytest.approx(
        d3.get_potential_energy())
    np.testing.assert_allclose(corrected.get_stress(),
                               calculate_numerical_stress(corrected, eps=1e-5), atol=1e-6)


def test_unknown_functional_fails_before_training(acac_dir, tmp_path):
    pytest.importorskip("dftd3")
    with pytest.raises(ValueError, match="no parameters for functional 'nonsense'"):
        _train(acac_dir, tmp_path, dispersion_correction="d3", xc_functional="nonsense")


# Molecular C6 (Hartree·bohr⁶) from dipole oscillator strength distributions (Meath and
# co-workers), as collected by Tkatchenko & Scheffler, PRL 102, 073005 (2009)
DOSD_C6 = {"H2O": 45.29, "NH3": 89.03, "CH4": 129.6, "C2H2": 204.1, "C2H4": 300.2,
           "C2H6": 381.8, "C3H8": 768.1, "C6H6": 1723.0, "CH3OH": 222.0}


def molecular_c6(term: Dispersion, atoms, v: torch.Tensor) -> float:
    """Σ_ij C6_ij over all atom pairs of a molecule with itself, Hartree·bohr⁶."""
    n = len(atoms)
    i, j = (torch.as_tensor(a.ravel()) for a in np.meshgrid(range(n), range(n), indexing="ij"))
    c6 = term.pair_c6(v, torch.as_tensor(atoms.numbers), i, j)
    return float(c6.sum()) / (Hartree * Bohr**6)


def test_volumes_pinned_to_d4_give_the_reference_molecular_c6():
    """Volume ratios pinned to D4's atomic C6, combined by the model's TS rule, give molecular
    C6 within 8 % of the DOSD references (D4 itself: within 6 % on these)."""
    pytest.importorskip("dftd4")
    from ase.build import molecule

    from mlpot.physics.dispersion import d4_volume_ratios

    term = Dispersion([1, 6, 7, 8], cutoff=4.0).double()
    for name, reference in DOSD_C6.items():
        atoms = molecule(name)
        v = torch.as_tensor(d4_volume_ratios(atoms.numbers, atoms.positions, np.zeros((3, 3)),
                                             np.zeros(3, dtype=bool), 0.0))
        assert molecular_c6(term, atoms, v) == pytest.approx(reference, rel=0.08), name
    # an untrained term (v = 1: free atoms) is far off for hydrogen-rich molecules
    assert abs(molecular_c6(term, molecule("CH4"), torch.ones(5, dtype=torch.float64))
               / DOSD_C6["CH4"] - 1) > 0.3


def test_the_volume_prior_pins_learned_volumes_to_d4():
    """The loss's volume term alone, minimised in training mode on methane and water, brings
    the network's volume ratios to D4's (the prior reaches the volume network)."""
    pytest.importorskip("dftd4")
    from ase.build import molecule

    from mlpot.physics.dispersion import d4_volume_ratios
    from mlpot.train.loss import EnergyForceLoss

    term = _term(elements=(1, 6, 8), seed=1).train()
    frames = [frame_from_atoms(molecule(name), source="test", index=0)
              for name in ("CH4", "H2O")]
    batch = collate(frames, [graph_arrays(f.positions, f.cell, f.pbc, 4.0) for f in frames],
                    dtype=torch.float64)
    pinned = np.concatenate([d4_volume_ratios(f.numbers, f.positions, f.cell, f.pbc, 0.0)
                             for f in frames])
    loss = EnergyForceLoss()
    energy = torch.zeros(2, dtype=torch.float64)
    optimizer = torch.optim.Adam(term.parameters(), lr=0.02)
    assert np.abs(term.volume_ratios(batch).detach().numpy() / pinned - 1).max() > 0.2
    for _ in range(300):
        out = term(batch)
        value, _ = loss({keys.ENERGY: energy, keys.VOLUME_DEVIATION: out[keys.VOLUME_DEVIATION]},
                        {keys.ENERGY: energy, keys.N_ATOMS: batch[keys.N_ATOMS]})
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    np.testing.assert_allclose(term.volume_ratios(batch).detach().numpy(), pinned, rtol=0.02)
    assert keys.VOLUME_DEVIATION not in term.eval()(batch)  # prediction: no D4 call
