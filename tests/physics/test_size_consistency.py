"""Size consistency of the long-range terms, default settings, every model kind that has them:
fragments out of each other's reach get exactly the charges, volumes, energies and forces they
get alone (each with its own integer charge), in training mode and in prediction; the
charges of the default fragment scheme are continuous, with continuous forces, as fragments
approach and merge."""

import numpy as np
import pytest
import torch
from unittest import mock

from mlpot import keys
from mlpot.config import config_from_dict
from mlpot.data.batch import collate
from mlpot.data.records import Frame
from mlpot.neighbors import graph_arrays
from mlpot.physics.charges import ChargeHead
from mlpot.train.run import build_potential

pytest.importorskip("torchpme")
CUTOFF = 4.0
WATER = np.array([[0.0, 0.0, 0.0], [0.76, 0.0, -0.59], [-0.76, 0.0, -0.59]])


def _frame(numbers, positions, charge=0.0, box: float | None = None) -> Frame:
    """A molecule, or with ``box`` (Å) a periodic cubic cell."""
    frame = Frame(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=float),
                  cell=np.eye(3) * (box or 0.0), pbc=np.full(3, box is not None))
    frame.charge = charge
    return frame


def _system(separation: float, total: float, box: float | None = None):
    """Na with a water molecule in its first shell, and a second water `separation` Å
    beyond the first (farther than the cutoff: out of reach), with total charge `total`;
    returns (pair, number of atoms of the first fragment)."""
    first = np.vstack([WATER, [[0.3, 0.2, 2.3]]])
    second = WATER @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
    second = second + [0.4, -0.3, 2.3 + separation]
    return _frame([8, 1, 1, 11, 8, 1, 1], np.vstack([first, second]), total, box), 4


def _potential(kind: str, seed: int = 0):
    config = config_from_dict({"data": {"train": "unused.xyz"},
                               "model": {"kind": kind, "size": "small", "cutoff": CUTOFF,
                                         "long_range": "both"},
                               "training": {"dtype": "float64"}})
    torch.manual_seed(seed)
    potential = build_potential(config, [1, 8, 11], {"H": -13.6, "O": -2040.0, "Na": -4418.0})
    with torch.no_grad():  # charge and volume networks far from their initial values
        for term in potential.physics_terms:
            for parameter in term.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.5)
    return potential.double()


def _fragment_wise(potential, pair: Frame, split: int, charges: tuple[float, float]):
    """Energy and forces of ``pair`` with every environment-dependent quantity (local
    energies, charges, volumes) computed on each fragment alone with its own total charge;
    only the long-range kernels see the pair."""
    positions = torch.tensor(pair.positions, requires_grad=True)
    short, q, v = [], [], []
    for part, charge in zip((slice(0, split), slice(split, None)), charges):
        alone = _frame(pair.numbers[part], pair.positions[part], charge,
                       pair.cell[0, 0] if pair.pbc.any() else None)
        batch = potential.batch([alone])
        batch[keys.POSITIONS] = positions[part]
        short.append(potential.model(batch)[keys.ATOMIC_ENERGY].sum()
                     + potential.e0[batch[keys.NUMBERS]].sum())
        q.append(potential.long_range.charge_head(batch)[0])
        v.append(potential.dispersion.volume_ratios(batch))
    batch = potential.batch([pair])
    batch[keys.POSITIONS] = positions
    q = torch.cat(q)
    with mock.patch.object(potential.dispersion, "volume_ratios", lambda _: torch.cat(v)):
        long = potential.long_range.coulomb(q, batch).sum() + \
            potential.dispersion(batch)["atomic"].sum()
    energy = sum(short) + long
    forces = -torch.autograd.grad(energy, positions)[0]
    return float(energy), forces.numpy(), q.detach().numpy(), torch.cat(v).detach().numpy()


@pytest.mark.parametrize("kind, box", [("bpnn", None), ("schnet", None), ("painn", None),
                                       ("equivariant", None), ("bpnn", 16.0),
                                       ("equivariant", 16.0)])
def test_separated_fragments_are_what_they_are_alone(kind, box):
    """Molecules, and periodic cells (Ewald, a neutralising background for a charged cell):
    the pair's images stay out of reach too (16 Å box)."""
    potential = _potential(kind)
    assert potential.long_range.charge_head.neutrality == "fragments"  # the default
    for training in (False, True):
        potential.train(training)
        for total in (1.0, 0.0, -1.0):
            pair, split = _system(separation=CUTOFF + 1.5, total=total, box=box)
            out = potential(potential.batch([pair]))
            q = out[keys.CHARGES].detach().numpy()
            parts = (round(q[:split].sum()), round(q[split:].sum()))
            # each fragment carries an integer charge, and they add up to the total
            assert q[:split].sum() == pytest.approx(parts[0], abs=1e-10)
            assert sum(parts) == total
            energy, forces, q_alone, v_alone = _fragment_wise(potential, pair, split, parts)
            np.testing.assert_allclose(q, q_alone, rtol=0, atol=1e-10)
            np.testing.assert_allclose(out[keys.VOLUME_RATIOS].detach().numpy(), v_alone,
                                       rtol=0, atol=1e-10)
            assert float(out[keys.ENERGY]) == pytest.approx(energy, rel=1e-12, abs=1e-8)
            np.testing.assert_allclose(out[keys.FORCES].detach().numpy(), forces,
                                       rtol=0, atol=1e-8)
            assert np.abs(q).max() > 0.05  # not trivially neutral


def _head(seed: int = 1) -> ChargeHead:
    torch.manual_seed(seed)
    head = ChargeHead([1, 8, 11], cutoff=CUTOFF).double()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(0, 0.5)
    return head


def _charges(head, frame: Frame, positions=None):
    batch = collate([frame], [graph_arrays(frame.positions, frame.cell, frame.pbc, CUTOFF)],
                    dtype=torch.float64)
    if positions is not None:
        batch[keys.POSITIONS] = positions
    return head(batch)[0]


def test_fragment_charges_are_continuous_as_fragments_merge():
    """Along an approach of an ion from 6 Å to 1.8 Å the charges change by at most a small
    step per 0.005 Å (no jump where the ion enters the cutoff or half of it) and always sum
    to the total; the forces of a charge-weighted energy equal finite differences across the
    blending range. (The formal networks are set to constant charges, Na +1 and O, H 0: a
    formal sum that crosses a half-integer on the way is the one discontinuity the scheme
    keeps, by design.)"""
    head = _head()
    with torch.no_grad():
        for symbol, network in head.formal_networks.items():
            network[-1].weight.zero_()
            network[-1].bias.fill_(1.0 if symbol == "Na" else 0.0)
    distances = np.arange(6.0, 1.8, -0.005)
    charges = np.array([_charges(head, _frame([8, 1, 1, 11], np.vstack(
        [WATER, [[0.0, 0.0, d]]]), 1.0)).detach().numpy() for d in distances])
    np.testing.assert_allclose(charges.sum(1), 1.0, rtol=0, atol=1e-12)
    steps = np.abs(np.diff(charges, axis=0)).max(1)
    assert steps.max() < 0.02  # a flip or a level entering with a jump moves ≥ 0.1 e here
    assert np.ptp(charges[:, 3]) > 0.1  # the ion's charge does change on the way in
    # a smooth function of the charges: its gradient is the finite difference (C¹)
    probe = torch.tensor([0.3, -0.7, 1.1, 0.5], dtype=torch.float64)
    for d in (CUTOFF * 0.5 + 0.3, CUTOFF * 0.75, CUTOFF - 0.2):
        frame = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.2, 0.1, d]]]), 1.0)
        positions = torch.tensor(frame.positions, requires_grad=True)

        def value(r):
            return float((probe * _charges(head, frame, torch.as_tensor(r))).sum())

        grad = torch.autograd.grad((probe * _charges(head, frame, positions)).sum(),
                                   positions)[0].numpy()
        numeric = np.zeros_like(grad)
        for a in range(4):
            for k in range(3):
                step = np.zeros_like(frame.positions)
                step[a, k] = 1e-5
                numeric[a, k] = (value(frame.positions + step)
                                 - value(frame.positions - step)) / 2e-5
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_fractional_total_and_other_schemes():
    """A fractional total charge keeps the structure one group (the sum is exact); the
    "structure" scheme moves a fraction of charge across 10 Å, which the default does not;
    "none" leaves the raw charges alone and reports what neutralisation would have supplied."""
    head = _head()
    far = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.0, 0.0, 10.0]]]), 0.5)
    assert float(_charges(head, far).sum()) == pytest.approx(0.5, abs=1e-12)
    far.charge = 1.0
    default = _charges(head, far).detach().numpy()
    head.neutrality = "structure"
    structure = _charges(head, far).detach().numpy()
    assert abs(structure[3] - round(structure[3])) > 1e-3
    assert default[3] == pytest.approx(round(default[3]), abs=1e-12)
    head.neutrality = "none"
    batch = collate([far], [graph_arrays(far.positions, far.cell, far.pbc, CUTOFF)],
                    dtype=torch.float64)
    raw, excess, _ = head(batch)
    assert float(excess[0]) == pytest.approx(1.0 - float(raw.sum()), abs=1e-12)
    # "structure" hands that excess out by weight: the same raw charges underneath
    assert float(excess[0]) == pytest.approx(float((structure - raw.detach().numpy()).sum()),
                                             abs=1e-12)


def test_charge_excess_prior_teaches_the_formal_networks_their_totals():
    """The loss's charge-excess term alone, minimised on an isolated Na⁺ (+1) and a water (0),
    drives the formal networks' sums (what decides each fragment's integer) to the totals,
    although the default scheme's charges satisfy them exactly from the start; the charge
    networks themselves get no gradient from it."""
    from mlpot.train.loss import EnergyForceLoss

    head = _head(seed=3)
    frames = [_frame([11], [[0.0, 0.0, 0.0]], 1.0), _frame([8, 1, 1], WATER, 0.0)]
    batch = collate(frames, [graph_arrays(f.positions, f.cell, f.pbc, CUTOFF) for f in frames],
                    dtype=torch.float64)
    loss = EnergyForceLoss()
    energy = torch.zeros(2, dtype=torch.float64)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.02)

    def formal_sums():
        formal = head.apply_networks(head.formal_networks,
                                     *head.standardised_features(batch))[:, 0].detach()
        return torch.zeros(2, dtype=torch.float64).index_add(0, batch[keys.BATCH],
                                                             formal).numpy()

    charge_networks = [p.detach().clone() for p in head.networks.parameters()]
    before = formal_sums()
    assert np.abs(before - [1.0, 0.0]).max() > 0.3
    for _ in range(300):
        charges, excess, _ = head(batch)
        value, parts = loss({keys.ENERGY: energy, keys.CHARGE_EXCESS: excess},
                            {keys.ENERGY: energy, keys.N_ATOMS: batch[keys.N_ATOMS]})
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    np.testing.assert_allclose(formal_sums(), [1.0, 0.0], atol=0.02)
    assert "charge_excess" in parts
    for old, new in zip(charge_networks, head.networks.parameters()):
        torch.testing.assert_close(old, new, rtol=0, atol=0)



def test_charge_excess_only_where_the_data_gives_the_total():
    """The prior's excess covers the structures that are one fragment at the cutoff (their
    integer is the data's total charge); a structure of separated fragments gets its
    fragments' integers from the model's own rounding, and a prior on those would pull the
    raw charges toward whatever assignment the network started with: it reports none."""
    head = _head()
    ion = _frame([11], [[0.0, 0.0, 0.0]], 1.0)
    water = _frame([8, 1, 1], WATER, 0.0)
    apart = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.0, 0.0, 2 * CUTOFF]]]), 1.0)
    frames = [ion, apart, water]
    batch = collate(frames, [graph_arrays(f.positions, f.cell, f.pbc, CUTOFF) for f in frames],
                    dtype=torch.float64)
    formal = head.apply_networks(head.formal_networks, *head.standardised_features(batch))[:, 0]
    charges, excess, whole = head(batch)
    assert whole.tolist() == [True, False, True]
    sums = torch.zeros(3, dtype=torch.float64).index_add(0, batch[keys.BATCH], formal)
    np.testing.assert_allclose(excess.detach().numpy(),
                               [1.0 - float(sums[0]), 0.0 - float(sums[2])], atol=1e-12)
    # the separated pair still gets integer charges per fragment, summing to its total
    pair = charges[batch[keys.BATCH] == 1].detach().numpy()
    assert pair[:3].sum() == pytest.approx(round(pair[:3].sum()), abs=1e-12)
    assert pair.sum() == pytest.approx(1.0, abs=1e-12)


def test_lone_ions_train_the_charge_network(tmp_path):
    """A lone ion in the training file sets its element's reference energy and, with a
    Coulomb term, is also a training structure (what tells the charge network the ion's
    charge); neutral isolated atoms, or a model without charges, only set E0."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mlpot.train.run import load_data

    frames = []
    for numbers, positions, charge, energy in (
            ([17], [[0.0, 0.0, 0.0]], -1, -12520.0), ([1], [[0.0, 0.0, 0.0]], 0, -13.6),
            *[([8, 1, 1], WATER * (1 + 0.01 * k), 0, -2080.0 - 0.01 * k) for k in range(4)]):
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.info["charge"] = charge
        atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                           forces=np.zeros((len(numbers), 3)))
        frames.append(atoms)
    path = tmp_path / "train.xyz"
    write(path, frames, format="extxyz")
    for long_range, lone in (("coulomb", 1), ("both", 1), ("none", 0), ("dispersion", 0)):
        data = load_data(config_from_dict({"data": {"train": str(path), "valid_fraction": 0.25},
                                           "model": {"long_range": long_range}}))
        assert len(data["isolated"]) == 2
        assert len(data["valid"]) == 1
        assert sum(len(f) == 1 for f in data["train"]) == lone
        assert len(data["train"]) == 3 + lone


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_formal_charges_start_at_the_data_totals(seed):
    """Before training, the charge network is fitted to the single-fragment structures'
    totals (a lone Na⁺, waters, Na⁺ with its water): then a Na⁺ and a water out of each
    other's reach get +1 and 0, from any initial weights (before the fit, random weights put
    the +1 on the water for some seeds)."""
    from mlpot.train.formal_charges import fit_formal_charges

    potential = _potential("bpnn", seed=seed)
    rotations = [np.linalg.qr(np.random.default_rng(k).normal(size=(3, 3)))[0]
                 for k in range(4)]
    train = [_frame([11], [[0.0, 0.0, 0.0]], 1.0)]
    train += [_frame([8, 1, 1], WATER @ r.T, 0.0) for r in rotations]
    train += [_frame([8, 1, 1, 11], np.vstack([WATER @ r.T, [[0.0, 0.3, 2.4 + 0.2 * k]]]), 1.0)
              for k, r in enumerate(rotations)]
    apart = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.0, 0.0, 2 * CUTOFF]]]), 1.0)
    result = fit_formal_charges(potential, train, seed=seed)
    assert result["rms_excess_after"] < 0.02 < result["rms_excess_before"]
    charges = potential.long_range.charge_head(potential.batch([apart]))[0].detach().numpy()
    np.testing.assert_allclose([charges[:3].sum(), charges[3]], [0.0, 1.0], atol=1e-9)


def test_the_eeq_prior_pins_learned_charges_to_d4():
    """In training, the learned charges of single-fragment structures come with their
    deviation from D4's EEQ charges (dftd4 called here as the oracle); the loss's term alone,
    minimised, brings them there. A structure of separated fragments gets no such term
    (EEQ spreads charge across any distance), and prediction calls no D4."""
    from dftd4.interface import DispersionModel
    from ase.units import Bohr

    from mlpot.physics.electrostatics import Electrostatics
    from mlpot.train.loss import EnergyForceLoss

    torch.manual_seed(2)
    term = Electrostatics([1, 8, 11], CUTOFF).double().train()
    near = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.2, 0.1, 2.4]]]), 1.0)
    apart = _frame([8, 1, 1, 11], np.vstack([WATER, [[0.0, 0.0, 2 * CUTOFF]]]), 1.0)
    water = _frame([8, 1, 1], WATER, 0.0)
    frames = [near, apart, water]
    batch = collate(frames, [graph_arrays(f.positions, f.cell, f.pbc, CUTOFF) for f in frames],
                    dtype=torch.float64)
    eeq = np.concatenate([DispersionModel(f.numbers, f.positions / Bohr, charge=f.charge)
                          .get_properties()["partial charges"] for f in (near, water)])
    out = term(batch)
    whole_atoms = np.r_[0:4, 8:11]
    np.testing.assert_allclose(out[keys.CHARGE_EEQ_DEVIATION].detach().numpy(),
                               out[keys.CHARGES].detach().numpy()[whole_atoms] - eeq,
                               atol=1e-12)
    assert np.abs(out[keys.CHARGES].detach().numpy()[whole_atoms] - eeq).max() > 0.1
    loss = EnergyForceLoss()
    energy = torch.zeros(3, dtype=torch.float64)
    optimizer = torch.optim.Adam(term.parameters(), lr=0.02)
    for _ in range(300):
        out = term(batch)
        value, parts = loss({keys.ENERGY: energy,
                             keys.CHARGE_EEQ_DEVIATION: out[keys.CHARGE_EEQ_DEVIATION]},
                            {keys.ENERGY: energy, keys.N_ATOMS: batch[keys.N_ATOMS]})
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert "charges_eeq" in parts
    np.testing.assert_allclose(term(batch)[keys.CHARGES].detach().numpy()[whole_atoms], eeq,
                               atol=0.02)
    assert keys.CHARGE_EEQ_DEVIATION not in term.eval()(batch)
