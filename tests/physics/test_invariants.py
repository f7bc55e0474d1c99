"""The physics every model must obey, run for each model kind inside ``Potential`` (float64).

Each check compares against an independent reference: the same structure transformed
(translation, rotation, permutation), central finite differences of the energy (forces,
stress), separately computed pieces (fragments, isolated atoms, one-by-one prediction), or
the mean-value theorem (continuity across the cutoff). A new model kind joins by adding a
builder to ``BUILDERS``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.records import Frame
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.models.bpnn import BehlerParrinello
from mlpot.models.linear import LinearModel
from mlpot.models.equivariant import Equivariant
from mlpot.models.painn import PaiNN
from mlpot.models.schnet import SchNet
from mlpot.models.standardize import element_feature_stats
from mlpot.neighbors import graph_arrays, neighbor_pairs
from mlpot.potential import Potential

ELEMENTS = [1, 6, 8]
E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}
CUTOFF = 4.0  # Å
REL = 1e-10  # relative tolerance of exact symmetries


def _bpnn(frames) -> torch.nn.Module:
    """Per-element SiLU networks with random weights, a random baseline term and statistics
    from real acac features (then perturbed), G4 with a shorter angular cutoff."""
    descriptor = SymmetryFunctions(ELEMENTS, cutoff=CUTOFF, angular_cutoff=3.5,
                                   radial=default_radial(CUTOFF, 4),
                                   angular=default_angular(3.5, 2, (1.0, 4.0)),
                                   angular_kind="G4", cutoff_function="polynomial")
    model = BehlerParrinello(descriptor, hidden=(8, 8), activation="silu").double()
    graphs = [graph_arrays(f.positions, f.cell, f.pbc, CUTOFF, 3.5) for f in frames]
    batch = collate(frames, graphs)
    features = descriptor(batch)
    species = descriptor.species_index[batch[keys.NUMBERS]]
    mean, std = element_feature_stats(features, species, len(ELEMENTS))
    generator = torch.Generator().manual_seed(1)
    noise = torch.rand(mean.shape, generator=generator, dtype=torch.float64)
    model.set_statistics(mean * (0.8 + 0.4 * noise), std * (1.0 + noise), energy_scale=0.3)
    with torch.no_grad():
        # networks: weights of order one; baseline terms outside the networks (the linear
        # ``weights`` or per-element ``coordination_energy``, whichever the model has): nonzero
        for name, parameter in model.named_parameters():
            scale = 0.3 if name.startswith("networks.") else 0.5  # baseline n_i ≈ 1 when bonded
            parameter.copy_(torch.randn(parameter.shape, generator=generator,
                                        dtype=torch.float64) * scale)
    return model


def _linear(frames) -> torch.nn.Module:
    """Random weights on G5 with the cosine cutoff (the other descriptor options)."""
    descriptor = SymmetryFunctions(ELEMENTS, cutoff=CUTOFF, radial=default_radial(CUTOFF, 4),
                                   angular=default_angular(CUTOFF, 2, (1.0, 4.0)),
                                   angular_kind="G5", cutoff_function="cosine")
    model = LinearModel(descriptor)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.weights.copy_(torch.randn(model.weights.shape, generator=generator,
                                        dtype=torch.float64) * 0.05)
    return model


def _schnet(frames) -> torch.nn.Module:
    """Three interactions (receptive field 3 r_c = 12 Å) with every weight random: matrices
    ~ N(0, 1/fan_in), biases and embeddings of order one, nonzero coordination energies."""
    model = SchNet(ELEMENTS, cutoff=CUTOFF, n_features=8, n_interactions=3, n_rbf=6,
                   cutoff_function="cosine").double()
    model.set_statistics(energy_scale=0.3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if name == "coordination_energy":
                scale = 0.5  # per bonded atom: the saturating baseline n_i is ≈ 1
            elif parameter.ndim == 2 and not name.startswith("embedding"):
                scale = parameter.shape[1] ** -0.5
            else:
                scale = 0.5
            parameter.copy_(noise * scale)
    return model


def _painn(frames) -> torch.nn.Module:
    """Three interactions (receptive field 12 Å), cosine cutoff, every weight random:
    matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0, 0.1²) (biases of 0.5 make
    the products of features grow to ~10⁶ over three layers), nonzero coordination energies.
    Switching off the vector messages changes atomic energies by up to 0.2 eV: they matter."""
    model = PaiNN(ELEMENTS, cutoff=CUTOFF, n_features=8, n_interactions=3, n_rbf=6,
                  cutoff_function="cosine").double()
    model.set_statistics(energy_scale=0.3)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if name == "coordination_energy":
                scale = 0.5  # per bonded atom: the saturating baseline n_i is ≈ 1
            elif name.startswith("embedding"):
                scale = 1.0
            elif parameter.ndim == 2:
                scale = parameter.shape[1] ** -0.5
            else:
                scale = 0.1
            parameter.copy_(noise * scale)
    return model


def _equivariant(frames) -> torch.nn.Module:
    """Three layers (receptive field 12 Å), vector features passed on (hidden_l = 1), l ≤ 2,
    product basis up to A³, cosine cutoff; default random initialisation (e3nn weights ~ N(0, 1)
    with path normalisation), readouts and coordination energies of order one."""
    torch.manual_seed(6)
    model = Equivariant(ELEMENTS, cutoff=CUTOFF, n_features=6, n_interactions=3, n_rbf=6,
                        cutoff_function="cosine", l_max=2, hidden_l=1, correlation=3,
                        radial_hidden=16).double()
    model.set_statistics(energy_scale=0.3, mean_neighbours=6.0)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.coordination_energy.copy_(0.5 * torch.randn(len(ELEMENTS), generator=generator,
                                                          dtype=torch.float64))
        for readout in model.readouts:
            for parameter in readout.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator,
                                                 dtype=torch.float64))
    return model


BUILDERS = {"bpnn": _bpnn, "equivariant": _equivariant, "linear": _linear, "painn": _painn,
            "schnet": _schnet}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def potential(request, acac_frames):
    model = BUILDERS[request.param](acac_frames[:20])
    pot = Potential(model, E0).double().eval()
    assert pot.dtype == torch.float64
    # the weights really are non-trivial: the model part of the energy is far from zero
    out = evaluate(pot, [acac_frames[0]])
    assert abs(float(out[keys.ENERGY][0]) - e0_sum(acac_frames[0])) > 0.1
    return pot


# --- helpers ---------------------------------------------------------------------------------

def make_frame(numbers, positions, cell=None, pbc=False) -> Frame:
    return Frame(numbers=np.asarray(numbers, dtype=np.int64),
                 positions=np.asarray(positions, dtype=np.float64),
                 cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64),
                 pbc=np.array([pbc] * 3, dtype=bool))


def moved(frame: Frame, positions=None, cell=None, numbers=None) -> Frame:
    return Frame(numbers=frame.numbers if numbers is None else np.asarray(numbers),
                 positions=frame.positions if positions is None else np.asarray(positions),
                 cell=frame.cell if cell is None else np.asarray(cell), pbc=frame.pbc)


def evaluate(potential, frames, stress=False, forces=True) -> dict[str, np.ndarray]:
    out = potential(potential.batch(frames), forces=forces, stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


def e0_sum(frame: Frame) -> float:
    from ase.data import chemical_symbols

    return sum(E0[chemical_symbols[z]] for z in frame.numbers)


def random_orthogonal(rng, proper: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def assert_energy_close(energy, reference, frame, rel=REL):
    """Compare energies on the scale of the model's part E − ΣE0 (not the huge total)."""
    scale = max(abs(float(reference) - e0_sum(frame)), 1.0)
    assert abs(float(energy) - float(reference)) <= rel * scale, (energy, reference)


def assert_forces_close(forces, reference, rel=REL, atol=0.0):
    scale = np.abs(reference).max()
    assert scale > 1e-3
    err = np.abs(forces - reference).max()
    assert err <= rel * scale + atol, f"max error {err:.3e} on scale {scale:.3e}"


def periodic_frame() -> Frame:
    """8 H/C/O atoms in a triclinic cell shorter than 2 r_c: atoms see their own images."""
    rng = np.random.default_rng(7)
    cell = np.array([[4.6, 0.0, 0.0], [1.1, 4.3, 0.0], [0.7, -0.9, 4.9]])
    numbers = [6, 6, 8, 1, 1, 1, 8, 1]
    while True:
        positions = rng.random((len(numbers), 3)) @ cell
        i, _, _ = neighbor_pairs(positions, cell, np.ones(3, bool), 1.1)
        if len(i) == 0:
            return make_frame(numbers, positions, cell, pbc=True)


# --- symmetries ------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", ["translation", "rotation", "reflection"])
def test_euclidean_invariance(potential, acac_frames, transform):
    rng = np.random.default_rng(11)
    frame = acac_frames[0]
    rotation = np.eye(3)
    shift = rng.normal(size=3) * 3.0
    if transform != "translation":
        rotation = random_orthogonal(rng, proper=transform == "rotation")
    new = moved(frame, positions=frame.positions @ rotation.T + shift)
    ref, out = evaluate(potential, [frame]), evaluate(potential, [new])
    assert_energy_close(out[keys.ENERGY][0], ref[keys.ENERGY][0], frame)
    assert_forces_close(out[keys.FORCES], ref[keys.FORCES] @ rotation.T)
    np.testing.assert_allclose(out[keys.ATOMIC_ENERGY], ref[keys.ATOMIC_ENERGY], rtol=1e-13)


def test_permutation(potential, acac_frames):
    rng = np.random.default_rng(12)
    frame = acac_frames[1]
    ref = evaluate(potential, [frame])
    # exchange like atoms only (numbers unchanged), then an arbitrary relabelling of all atoms
    like = np.arange(len(frame))
    for z in ELEMENTS:
        members = np.nonzero(frame.numbers == z)[0]
        like[members] = rng.permutation(members)
    assert np.any(like != np.arange(len(frame)))
    for order in (like, rng.permutation(len(frame))):
        new = moved(frame, positions=frame.positions[order], numbers=frame.numbers[order])
        out = evaluate(potential, [new])
        assert_energy_close(out[keys.ENERGY][0], ref[keys.ENERGY][0], frame)
        assert_forces_close(out[keys.FORCES], ref[keys.FORCES][order])
        np.testing.assert_allclose(out[keys.ATOMIC_ENERGY], ref[keys.ATOMIC_ENERGY][order],
                                   rtol=1e-13)


def test_periodic_invariance(potential):
    """Rotating cell and atoms together rotates forces and stress; translating and wrapping
    atoms back into the cell changes nothing."""
    rng = np.random.default_rng(13)
    frame = periodic_frame()
    rotation = random_orthogonal(rng, proper=True)
    rotated = moved(frame, positions=frame.positions @ rotation.T, cell=frame.cell @ rotation.T)
    shifted = frame.positions + rng.normal(size=3) * 2.0
    wrapped = (np.linalg.solve(frame.cell.T, shifted.T).T % 1.0) @ frame.cell
    ref, rot, wrap = (evaluate(potential, [f], stress=True)
                      for f in (frame, rotated, moved(frame, positions=wrapped)))
    for out, r in ((rot, rotation), (wrap, np.eye(3))):
        assert_energy_close(out[keys.ENERGY][0], ref[keys.ENERGY][0], frame)
        assert_forces_close(out[keys.FORCES], ref[keys.FORCES] @ r.T)
        assert_forces_close(out[keys.STRESS][0], r @ ref[keys.STRESS][0] @ r.T)


# --- derivatives -----------------------------------------------------------------------------

STENCIL = ((2.0, -1.0), (1.0, 8.0), (-1.0, -8.0), (-2.0, 1.0))  # (offset/h, weight·12)


def five_point(energies: np.ndarray, h: float) -> np.ndarray:
    """d/dx from energies at offsets (2h, h, −h, −2h) along the last axis: error O(h⁴)."""
    return energies @ np.array([w for _, w in STENCIL]) / (12 * h)


def finite_difference_forces(potential, frame: Frame, atoms, h: float = 1e-3) -> np.ndarray:
    """−∂E/∂r of ``atoms`` by fourth-order central differences, (len(atoms), 3), with all
    displaced structures in one batch."""
    frames = []
    for atom in atoms:
        for axis in range(3):
            for offset, _ in STENCIL:
                positions = frame.positions.copy()
                positions[atom, axis] += offset * h
                frames.append(moved(frame, positions=positions))
    energies = evaluate(potential, frames, forces=False)[keys.ENERGY]
    energies = energies.reshape(len(atoms), 3, len(STENCIL))
    return -five_point(energies, h)


@pytest.mark.parametrize("structure", ["molecule", "periodic"])
def test_forces_are_finite_differences(potential, acac_frames, structure):
    frame = acac_frames[2] if structure == "molecule" else periodic_frame()
    # a subset of atoms covering every element (acac: C, both O, the enol H, methyl H's)
    atoms = [0, 3, 5, 7, 11, 12] if structure == "molecule" else [0, 2, 3, 6, 7]
    assert set(frame.numbers[atoms]) == set(ELEMENTS)
    forces = evaluate(potential, [frame])[keys.FORCES][atoms]
    numeric = finite_difference_forces(potential, frame, atoms)
    assert_forces_close(forces, numeric, rel=1e-6, atol=1e-8)


def test_stress_is_strain_derivative(potential):
    """σ = (1/V) ∂E/∂ε (ASE's sign): central differences under symmetric strain ε applied to
    cell and atoms, r → r (1 + ε), with off-diagonal ε_ab = ε_ba."""
    frame = periodic_frame()
    volume = abs(np.linalg.det(frame.cell))
    h = 1e-4
    frames = []
    for a in range(3):
        for b in range(3):
            for offset, _ in STENCIL:
                strain = np.eye(3)
                strain[a, b] += offset * h / 2
                strain[b, a] += offset * h / 2
                frames.append(moved(frame, positions=frame.positions @ strain,
                                    cell=frame.cell @ strain))
    energies = evaluate(potential, frames, forces=False)[keys.ENERGY].reshape(3, 3, len(STENCIL))
    numeric = five_point(energies, h) / volume
    stress = evaluate(potential, [frame], stress=True)[keys.STRESS][0]
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    assert np.abs(stress).max() > 1e-3
    assert_forces_close(stress, numeric, rel=1e-7, atol=1e-10)


# --- locality --------------------------------------------------------------------------------

def reach(model) -> float:
    """Farthest distance (Å) at which an atom can change another's energy: the cutoff for
    descriptor models, n_interactions × cutoff for message passing."""
    return getattr(model, "receptive_field", model.cutoff)


def test_atomic_energy_is_local(potential, acac_frames):
    """Moving atom A changes no atomic energy of atoms beyond the cutoff of A."""
    if reach(potential.model) > potential.model.cutoff:
        pytest.skip("message passing reaches beyond one cutoff: see test_receptive_field")
    frame = acac_frames[3]
    distances = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
    rng = np.random.default_rng(14)
    ref = evaluate(potential, [frame], forces=False)[keys.ATOMIC_ENERGY]
    movers, frames = [], []
    for a in range(len(frame)):
        if np.any(distances[a] > CUTOFF + 0.3):
            positions = frame.positions.copy()
            step = rng.normal(size=3)
            positions[a] += 0.2 * step / np.linalg.norm(step)  # stays beyond r_c of far atoms
            movers.append(a)
            frames.append(moved(frame, positions=positions))
    assert len(movers) >= 3
    out = evaluate(potential, frames, forces=False)[keys.ATOMIC_ENERGY].reshape(len(movers), -1)
    for a, energies in zip(movers, out):
        far = distances[a] > CUTOFF + 0.3
        np.testing.assert_allclose(energies[far], ref[far], rtol=1e-14)
        near = distances[a] < CUTOFF - 0.5
        assert np.all(np.abs(energies[near] - ref[near]) > 1e-9)  # those within r_c do change


def chain_frame(n: int = 10, spacing: float = 3.2) -> Frame:
    """H/C/O atoms ``spacing`` Å apart along x (jittered by < 0.1 Å across): with r_c = 4 Å
    only consecutive atoms are neighbours, so atom k is k hops and ≈ k·spacing Å from atom 0."""
    rng = np.random.default_rng(18)
    positions = np.zeros((n, 3))
    positions[:, 0] = spacing * np.arange(n)
    positions[:, 1:] = rng.uniform(-0.05, 0.05, size=(n, 2))
    return make_frame(([6, 8, 1] * n)[:n], positions)


def test_receptive_field(potential):
    """Moving atom A leaves the atomic energy of every atom farther than the receptive field
    R (cutoff; n_interactions × cutoff for message passing) from A unchanged to rounding,
    and changes that of every atom within R that a chain of neighbours joins to A: for
    message passing that includes atoms beyond one cutoff (up to n_interactions hops)."""
    model = potential.model
    frame = chain_frame()
    distances = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
    i, j, _ = neighbor_pairs(frame.positions, frame.cell, frame.pbc, model.cutoff)
    assert sorted(zip(i, j)) == sorted([(k, k + 1) for k in range(len(frame) - 1)]
                                       + [(k + 1, k) for k in range(len(frame) - 1)])
    radius = reach(model)
    ref = evaluate(potential, [frame], forces=False)[keys.ATOMIC_ENERGY]
    rng = np.random.default_rng(19)
    movers, frames = [0, 5], []
    for a in movers:
        positions = frame.positions.copy()
        step = rng.normal(size=3)
        positions[a] += 0.2 * step / np.linalg.norm(step)  # keeps the same neighbour pairs
        frames.append(moved(frame, positions=positions))
    out = evaluate(potential, frames, forces=False)[keys.ATOMIC_ENERGY].reshape(len(movers), -1)
    for a, energies in zip(movers, out):
        far = distances[a] > radius + 0.3
        within = distances[a] < radius - 0.3
        assert far.any() and within.any()
        np.testing.assert_allclose(energies[far], ref[far], rtol=1e-14)
        assert np.all(np.abs(energies[within] - ref[within]) > 1e-9)
        beyond_cutoff = within & (distances[a] > model.cutoff)
        assert beyond_cutoff.any() == (radius > model.cutoff)


def _probe_frames(frame: Frame, atom: int, direction, radius: float, step: float, n: int):
    """Frames with an extra H atom at distances radius + (k + ½)·step from ``atom``,
    k = −n … n−1, so no sample lies exactly on the cutoff."""
    distances = radius + (np.arange(-n, n) + 0.5) * step
    frames = [moved(frame, positions=np.vstack([frame.positions,
                                                frame.positions[atom] + d * direction]),
                    numbers=np.append(frame.numbers, 1)) for d in distances]
    return frames, distances


def test_smooth_across_cutoff(potential, acac_frames):
    """An H atom moves away from the outermost atom P across each cutoff radius in tiny steps:
    the energy changes only as much as the forces say (no jump) and the forces have no jump."""
    frame = acac_frames[0]
    centre = frame.positions.mean(0)
    p = int(np.argmax(np.linalg.norm(frame.positions - centre, axis=1)))
    direction = frame.positions[p] - centre
    direction /= np.linalg.norm(direction)
    model = potential.model
    radii = sorted({model.cutoff, model.angular_cutoff} - {None})  # SchNet, PaiNN: no angular
    step, n = 1e-5, 4
    for radius in radii:
        frames, distances = _probe_frames(frame, p, direction, radius, step, n)
        # only the P–probe distance crosses a cutoff in this window
        others = np.linalg.norm(np.delete(frame.positions, p, 0)[None]
                                - np.array([f.positions[-1] for f in frames])[:, None], axis=-1)
        for r in radii:
            assert np.all(np.abs(others - r) > 1e-2)
        out = evaluate(potential, frames)
        energy = out[keys.ENERGY]
        forces = out[keys.FORCES].reshape(len(frames), len(frame) + 1, 3)
        # energy: E_{k+1} − E_k = −∫ F_probe·u dd ≈ −½(F_k + F_{k+1})·u step (trapezoid)
        along = forces[:, -1] @ direction
        d_energy = np.diff(energy)
        predicted = -0.5 * (along[1:] + along[:-1]) * step
        np.testing.assert_allclose(d_energy, predicted, rtol=1e-3, atol=2e-11)
        # forces: the change over the step across r_c is no larger than over the steps before
        d_forces = np.abs(np.diff(forces, axis=0)).max(axis=(1, 2))
        crossing = n - 1  # between samples at r_c − step/2 and r_c + step/2
        assert d_forces[crossing] <= 3 * d_forces[crossing - 2:crossing].max() + 1e-12
        if radius == model.cutoff:
            # beyond r_c the probe is an isolated atom: E = E(molecule) + E0(H), F_probe = 0
            alone = evaluate(potential, [frame])[keys.ENERGY][0] + E0["H"]
            assert np.all(energy[n:] == pytest.approx(alone, abs=1e-10))
            np.testing.assert_array_equal(forces[n:, -1], 0.0)
            # and just inside it is approaching that value: no step at r_c
            assert abs(energy[n - 1] - alone) < 1e-8
            assert np.abs(forces[n - 1, -1]).max() < 1e-4
            # not a vacuous test: 0.05 Å inside r_c the probe does interact with P
            inside, _ = _probe_frames(frame, p, direction, radius - 0.05, step, 1)
            near = evaluate(potential, inside[:1])
            assert abs(near[keys.ENERGY][0] - alone) > 1e-7
            assert np.abs(near[keys.FORCES][-1]).max() > 1e-5


# --- additivity ------------------------------------------------------------------------------

def test_batched_equals_single(potential, acac_frames):
    rng = np.random.default_rng(15)
    single_atom = make_frame([8], rng.normal(size=(1, 3)))
    frames = [acac_frames[4], periodic_frame(), single_atom, acac_frames[5]]
    together = evaluate(potential, frames, stress=True)
    offsets = np.cumsum([0] + [len(f) for f in frames])
    for k, frame in enumerate(frames):
        alone = evaluate(potential, [frame], stress=bool(frame.pbc.all()))
        atoms = slice(offsets[k], offsets[k + 1])
        assert_energy_close(together[keys.ENERGY][k], alone[keys.ENERGY][0], frame, rel=1e-12)
        np.testing.assert_allclose(together[keys.ATOMIC_ENERGY][atoms],
                                   alone[keys.ATOMIC_ENERGY], rtol=1e-14)
        if len(frame) > 1:
            assert_forces_close(together[keys.FORCES][atoms], alone[keys.FORCES], rel=1e-12)
        if frame.pbc.all():
            assert_forces_close(together[keys.STRESS][k], alone[keys.STRESS][0], rel=1e-12)


def test_isolated_atom_gives_e0(potential):
    from ase.data import atomic_numbers

    rng = np.random.default_rng(16)
    frames = [make_frame([atomic_numbers[s]], rng.normal(size=(1, 3))) for s in E0]
    # an atom alone in a periodic box larger than the cutoff sees no image either
    frames.append(make_frame([6], [[1.0, 2.0, 3.0]], np.diag([9.0, 8.5, 10.0]), pbc=True))
    out = evaluate(potential, frames)
    expected = [E0[s] for s in E0] + [E0["C"]]
    np.testing.assert_array_equal(out[keys.ENERGY], expected)
    np.testing.assert_array_equal(out[keys.FORCES], 0.0)


def test_separated_fragments_are_additive(potential, acac_frames):
    """Two molecules farther apart than the cutoff: energies add, forces and atomic energies
    are those of each molecule alone; an extra far atom contributes exactly E0."""
    rng = np.random.default_rng(17)
    a, b = acac_frames[6], acac_frames[7]
    rotation = random_orthogonal(rng, proper=True)
    b_positions = b.positions @ rotation.T + np.array([CUTOFF + 9.0, 1.0, -2.0])
    far_atom = np.array([[-CUTOFF - 6.0, 0.0, 0.0]])
    combined = make_frame(np.concatenate([a.numbers, b.numbers, [8]]),
                          np.vstack([a.positions, b_positions, far_atom]))
    gaps = np.linalg.norm(combined.positions[:len(a)][:, None]
                          - combined.positions[len(a):][None], axis=-1)
    assert gaps.min() > CUTOFF + 0.5
    part_b = make_frame(b.numbers, b_positions)
    out, out_a, out_b = (evaluate(potential, [f]) for f in (combined, a, part_b))
    expected = out_a[keys.ENERGY][0] + out_b[keys.ENERGY][0] + E0["O"]
    assert abs(out[keys.ENERGY][0] - expected) < 1e-9
    np.testing.assert_allclose(out[keys.ATOMIC_ENERGY],
                               np.concatenate([out_a[keys.ATOMIC_ENERGY],
                                               out_b[keys.ATOMIC_ENERGY], [E0["O"]]]),
                               rtol=1e-14)
    reference = np.vstack([out_a[keys.FORCES], out_b[keys.FORCES], np.zeros((1, 3))])
    assert_forces_close(out[keys.FORCES], reference, rel=1e-12)


def test_reference_energies_stay_float64_in_float32_models():
    """E0 ~ 2e3 eV loses ~1e-5 eV in float32; the Potential keeps it exact whatever its dtype."""
    model = _linear([])
    potential = Potential(model, E0).float()
    assert potential.dtype == torch.float32
    assert potential.e0.dtype == torch.float64
    assert float(potential.e0[8]) == E0["O"]
