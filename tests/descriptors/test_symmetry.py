"""Symmetry functions against dscribe's ACSF, cutoff functions, and angular triplets.

Conventions of dscribe 2.1 ``ACSF`` (read from ``dscribe/ext/acsf.cpp``) and how they map to
mlpot's, all checked by the tests below:

* dscribe always emits G1 = Σ_j f_c(r_ij) per element: per-element block is
  [G1, G2(grid)..., G3(grid)...]; mlpot has no G1, so those columns are dropped.
* dscribe's element-pair blocks are indexed by ``b(b+1)/2 + a`` for species indices a ≤ b,
  i.e. pairs in the order (0,0), (0,1), (1,1), (0,2), (1,2), (2,2), ...; mlpot uses
  ``itertools.combinations_with_replacement``: (0,0), (0,1), (0,2), (1,1), (1,2), (2,2).
  They agree for two elements and differ from three on (acac: H, C, O), hence
  :func:`dscribe_columns`. Each pair block holds [G4(grid)..., G5(grid)...].
* Both sort species by atomic number, count each unordered neighbour pair (j, k) once
  (dscribe loops k < j), and use the same angular normalisation:
  dscribe's 2·(½(1 + λ cos θ))^ζ equals mlpot's 2^{1−ζ} (1 + λ cos θ)^ζ.
* dscribe has only the cosine cutoff ½[cos(π r/r_c) + 1], one r_c for radial and angular
  terms, and in G4 also f_c(r_jk) (skipping r_jk > r_c), as mlpot does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlpot import keys
from mlpot.data.batch import collate
from mlpot.data.records import frame_from_atoms
from mlpot.descriptors.cutoff import cosine_cutoff, polynomial_cutoff
from mlpot.descriptors.symmetry import SymmetryFunctions, default_angular, default_radial
from mlpot.neighbors import SkinNeighborList, graph_arrays, neighbor_pairs, triplets_from_edges

CUTOFF = 5.0  # Å
RADIAL = default_radial(CUTOFF, 4)
ANGULAR = default_angular(CUTOFF, 2, (1.0, 4.0))  # λ = ±1, ζ ∈ {1, 4}: 8 angular functions


def mlpot_features(atoms: Atoms, elements, kind: str, cutoff: float = CUTOFF,
                   angular_cutoff: float | None = None, cutoff_function: str = "cosine",
                   radial=RADIAL, angular=ANGULAR) -> np.ndarray:
    sf = SymmetryFunctions(elements, cutoff=cutoff, angular_cutoff=angular_cutoff, radial=radial,
                           angular=angular, angular_kind=kind, cutoff_function=cutoff_function)
    frame = frame_from_atoms(atoms, source="<test>", index=0)
    graph = graph_arrays(frame.positions, frame.cell, frame.pbc, sf.cutoff, sf.angular_cutoff)
    batch = collate([frame], [graph], dtype=torch.float64)
    return sf(batch).numpy()


def dscribe_columns(n_el: int, n_radial: int, n_angular: int, kind: str) -> list[int]:
    """Columns of dscribe's ACSF (G2, G4 and G5 grids all given) in mlpot's feature order."""
    per_element = 1 + n_radial  # G1 + G2 grid (no G3)
    columns = [s * per_element + 1 + p for s in range(n_el) for p in range(n_radial)]
    shift = 0 if kind == "G4" else n_angular  # each pair block: [G4 grid | G5 grid]
    for a, b in itertools.combinations_with_replacement(range(n_el), 2):
        block = b * (b + 1) // 2 + a  # dscribe's pair index (a ≤ b)
        start = n_el * per_element + block * 2 * n_angular + shift
        columns += list(range(start, start + n_angular))
    return columns


def dscribe_features(atoms: Atoms, elements, periodic: bool) -> np.ndarray:
    """dscribe's ACSF with the same grids (skips the test where dscribe is not installed)."""
    ACSF = pytest.importorskip("dscribe.descriptors").ACSF
    acsf = ACSF(r_cut=CUTOFF, g2_params=np.array(RADIAL).T, g4_params=np.array(ANGULAR).T,
                g5_params=np.array(ANGULAR).T, species=list(elements), periodic=periodic)
    n_el, n_rad, n_ang = len(elements), len(RADIAL[0]), len(ANGULAR[0])
    assert acsf.get_number_of_features() == n_el * (1 + n_rad) + n_el * (n_el + 1) // 2 * 2 * n_ang
    return acsf.create(atoms)


def periodic_cell() -> Atoms:
    """Rattled, sheared 8-atom rocksalt cell (Na, Cl): many periodic images within r_c."""
    atoms = bulk("NaCl", "rocksalt", a=4.0, cubic=True)
    cell = atoms.cell.array.copy()
    cell[0] += [0.0, 0.4, 0.2]
    cell[2] += [0.3, -0.2, 0.0]
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.15, seed=3)
    return atoms


def assert_features_close(ours: np.ndarray, theirs: np.ndarray, rel: float = 1e-10):
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 0.1
    err = np.abs(ours - theirs)
    assert err.max() <= rel * scale, f"max abs error {err.max():.3e} (scale {scale:.3e})"
    # elementwise too, so small features are not hidden by large ones
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12 * scale)


@pytest.mark.parametrize("kind", ["G4", "G5"])
def test_matches_dscribe_molecule(acac_frames, kind):
    atoms = acac_frames[0].to_atoms()
    atoms.pbc = False
    elements = sorted(set(atoms.numbers.tolist()))
    assert len(elements) == 3  # H, C, O: the pair orders of the two codes differ
    theirs = dscribe_features(atoms, elements, periodic=False)
    columns = dscribe_columns(len(elements), len(RADIAL[0]), len(ANGULAR[0]), kind)
    ours = mlpot_features(atoms, elements, kind)
    # every atom sees each pair of elements somewhere, so wrong blocks would not hide as zeros
    assert np.all(np.abs(ours).sum(0) > 0)
    assert_features_close(ours, theirs[:, columns])


@pytest.mark.parametrize("kind", ["G4", "G5"])
def test_matches_dscribe_periodic(kind):
    atoms = periodic_cell()
    elements = [11, 17]
    # self-images and other images lie within the cutoff: a periodic-image test, not a molecule
    i, j, shifts = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)
    assert np.any((i == j) & np.any(shifts != 0, axis=1))
    assert len(i) > 20 * len(atoms)
    theirs = dscribe_features(atoms, elements, periodic=True)
    columns = dscribe_columns(len(elements), len(RADIAL[0]), len(ANGULAR[0]), kind)
    ours = mlpot_features(atoms, elements, kind)
    assert_features_close(ours, theirs[:, columns])
    # the open (molecular) version differs: periodicity really enters
    assert not np.allclose(ours, mlpot_features(Atoms(atoms.numbers, atoms.positions),
                                                elements, kind))


def test_dscribe_g1_is_sum_of_cosine_cutoffs(acac_frames):
    """dscribe's G1 columns (dropped above) equal Σ_j f_c: a check of the cutoff convention."""
    atoms = acac_frames[1].to_atoms()
    atoms.pbc = False
    elements = [1, 6, 8]
    theirs = dscribe_features(atoms, elements, periodic=False)
    i, j, _, d = neighbor_pairs(atoms.positions, np.zeros((3, 3)), atoms.pbc, CUTOFF, True)
    fc = cosine_cutoff(torch.from_numpy(d), CUTOFF).numpy()
    species = np.searchsorted(elements, atoms.numbers[j])
    g1 = np.zeros((len(atoms), len(elements)))
    np.add.at(g1, (i, species), fc)
    n_rad = len(RADIAL[0])
    np.testing.assert_allclose(theirs[:, [s * (1 + n_rad) for s in range(3)]], g1, rtol=1e-12)


def brute_force_features(atoms: Atoms, elements, cutoff, angular_cutoff, kind, fc) -> np.ndarray:
    """Direct double/triple loops over atoms of an open structure (Behler 2011, eqs. 5, 9)."""
    pos, z = atoms.positions, atoms.numbers
    eta_r, shift = map(np.asarray, RADIAL)
    eta_a, zeta, lam = map(np.asarray, ANGULAR)
    pairs = list(itertools.combinations_with_replacement(elements, 2))
    n = len(atoms)
    radial = np.zeros((n, len(elements), len(eta_r)))
    angular = np.zeros((n, len(pairs), len(eta_a)))
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    for i in range(n):
        for j in range(n):
            if j != i and dist[i, j] < cutoff:
                radial[i, elements.index(z[j])] += (np.exp(-eta_r * (dist[i, j] - shift) ** 2)
                                                    * fc(dist[i, j], cutoff))
        for j, k in itertools.combinations(range(n), 2):
            if i in (j, k) or dist[i, j] >= angular_cutoff or dist[i, k] >= angular_cutoff:
                continue
            cos = np.dot(pos[j] - pos[i], pos[k] - pos[i]) / (dist[i, j] * dist[i, k])
            squares = dist[i, j] ** 2 + dist[i, k] ** 2
            cut = fc(dist[i, j], angular_cutoff) * fc(dist[i, k], angular_cutoff)
            if kind == "G4":
                squares += dist[j, k] ** 2
                cut *= fc(dist[j, k], angular_cutoff) if dist[j, k] < angular_cutoff else 0.0
            value = 2.0 ** (1 - zeta) * (1 + lam * cos) ** zeta * np.exp(-eta_a * squares) * cut
            angular[i, pairs.index(tuple(sorted((z[j], z[k]))))] += value
    return np.concatenate([radial.reshape(n, -1), angular.reshape(n, -1)], axis=1)


def _polynomial(r, rc):
    x = r / rc
    return 1 - 10 * x**3 + 15 * x**4 - 6 * x**5 if r < rc else 0.0


def _cosine(r, rc):
    return 0.5 * (math.cos(math.pi * r / rc) + 1) if r < rc else 0.0


@pytest.mark.parametrize("kind", ["G4", "G5"])
@pytest.mark.parametrize("cutoff_function", ["polynomial", "cosine"])
def test_brute_force_with_shorter_angular_cutoff(acac_frames, kind, cutoff_function):
    """Options dscribe lacks (polynomial cutoff, angular r_c < radial r_c) against plain loops."""
    atoms = acac_frames[2].to_atoms()
    atoms.pbc = False
    elements = [1, 6, 8]
    fc = _polynomial if cutoff_function == "polynomial" else _cosine
    ours = mlpot_features(atoms, elements, kind, cutoff=CUTOFF, angular_cutoff=3.0,
                          cutoff_function=cutoff_function)
    reference = brute_force_features(atoms, elements, CUTOFF, 3.0, kind, fc)
    assert_features_close(ours, reference)


@pytest.mark.parametrize("structure", ["acac", "periodic"])
def test_g5_from_moments_equals_the_triplet_sum(acac_frames, structure):
    """G5 summed from neighbour moments (integer ζ up to 8, both λ) equals the sum over
    triplets, values and their position derivatives, on a molecule and on a small periodic
    cell where atoms see several images of one neighbour; ζ = 16 or 2.5 keep the triplets."""
    atoms = periodic_cell() if structure == "periodic" else acac_frames[3].to_atoms()
    elements = sorted(set(atoms.numbers.tolist()))
    angular = default_angular(CUTOFF, 2, (1.0, 2.0, 3.0, 5.0, 8.0))
    sf = SymmetryFunctions(elements, cutoff=CUTOFF, angular_cutoff=4.0, radial=RADIAL,
                           angular=angular, angular_kind="G5")
    assert sf.moments is not None and not sf.needs_triplets
    triplet_sum = SymmetryFunctions(elements, cutoff=CUTOFF, angular_cutoff=4.0, radial=RADIAL,
                                    angular=angular, angular_kind="G5")
    triplet_sum.moments = None
    frame = frame_from_atoms(atoms, source="<test>", index=0)
    graph = graph_arrays(frame.positions, frame.cell, frame.pbc, CUTOFF, 4.0)
    batch = collate([frame], [graph], dtype=torch.float64)
    positions = batch[keys.POSITIONS].requires_grad_(True)
    weights = torch.randn(len(atoms), sf.n_features, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    ours, reference = sf(batch), triplet_sum(batch)
    assert_features_close(ours.detach().numpy(), reference.detach().numpy(), rel=1e-12)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), positions)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), positions)
    np.testing.assert_allclose(grad_ours.numpy(), grad_ref.numpy(), rtol=1e-9,
                               atol=1e-11 * grad_ref.abs().max().item())
    for zetas in [(1.0, 16.0), (1.0, 2.5)]:
        other = SymmetryFunctions(elements, cutoff=CUTOFF,
                                  angular=default_angular(CUTOFF, 1, zetas), angular_kind="G5")
        assert other.moments is None and other.needs_triplets


# --- cutoff functions ------------------------------------------------------------------------

CUTOFFS = {"polynomial": polynomial_cutoff, "cosine": cosine_cutoff}
RC = 4.5


@pytest.mark.parametrize("name", CUTOFFS)
def test_cutoff_values(name):
    fc = CUTOFFS[name]
    r = torch.tensor([0.0, RC, RC + 1e-12, RC + 0.5, 3 * RC], dtype=torch.float64)
    np.testing.assert_array_equal(fc(r, RC).numpy(), [1.0, 0.0, 0.0, 0.0, 0.0])
    inside = torch.linspace(0.01, RC - 0.01, 50, dtype=torch.float64)
    values = fc(inside, RC)
    assert torch.all((values > 0) & (values < 1))
    assert torch.all(values[1:] < values[:-1])  # strictly decreasing
    # against the closed forms
    ref = _polynomial if name == "polynomial" else _cosine
    np.testing.assert_allclose(values.numpy(), [ref(float(x), RC) for x in inside],
                               rtol=1e-12, atol=1e-14)


def _derivatives(fc, r: torch.Tensor):
    r = r.clone().requires_grad_(True)
    value = fc(r, RC)
    (first,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    return value.detach(), first.detach(), second


@pytest.mark.parametrize("name", CUTOFFS)
def test_cutoff_derivatives_vanish_at_cutoff(name):
    fc = CUTOFFS[name]
    # approach r_c from inside, at r_c and beyond
    delta = torch.tensor([1e-2, 1e-3, 1e-4, 1e-6], dtype=torch.float64)
    value, first, second = _derivatives(fc, RC - delta)
    _, first_at, _ = _derivatives(fc, torch.tensor([RC, RC + 0.1], dtype=torch.float64))
    assert torch.all(first_at == 0)
    order = 2 if name == "cosine" else 3  # f_c ~ δ^order near r_c
    # slope ~ δ^(order-1) → 0: it shrinks by about 10^(order-1) per decade of δ
    ratio = first[:-2].abs() / first[1:-1].abs()
    np.testing.assert_allclose(ratio.numpy(), 10.0 ** (order - 1), rtol=0.05)
    assert abs(float(first[-1])) < 1e-6
    # autograd slope equals a central finite difference inside (so the checks above have teeth)
    r0 = torch.tensor([1.3, 3.1], dtype=torch.float64)
    h = 1e-6
    fd = (fc(r0 + h, RC) - fc(r0 - h, RC)) / (2 * h)
    np.testing.assert_allclose(_derivatives(fc, r0)[1].numpy(), fd.numpy(), rtol=1e-8)
    if name == "polynomial":
        # C2: the second derivative also vanishes at r_c (∝ δ)
        assert float(second[-1].abs()) < 1e-4
        np.testing.assert_allclose((second[:-2] / second[1:-1]).numpy(), 10.0, rtol=0.05)
    else:
        # the cosine cutoff is only C1: f'' → π²/(2 r_c²) ≠ 0 as r → r_c⁻
        np.testing.assert_allclose(float(second[-1]), math.pi**2 / (2 * RC**2), rtol=1e-6)


# --- triplets --------------------------------------------------------------------------------

def brute_force_triplets(i: np.ndarray, n_atoms: int) -> set[tuple[int, int]]:
    """Every pair of distinct edges (a < b) with the same centre atom."""
    out = set()
    for centre in range(n_atoms):
        edges = np.nonzero(i == centre)[0]
        out |= {(int(a), int(b)) for a, b in itertools.combinations(edges, 2)}
    return out


@pytest.mark.parametrize("structure", ["molecule", "periodic"])
def test_triplets_equal_brute_force(acac_frames, structure):
    if structure == "molecule":
        frame = acac_frames[0]
        cell, pbc = frame.cell, frame.pbc
        positions, n = frame.positions, len(frame)
    else:
        atoms = periodic_cell()
        positions, cell, pbc, n = atoms.positions, atoms.cell.array, atoms.pbc, len(atoms)
    i, j, shifts = neighbor_pairs(positions, cell, pbc, 3.5)
    triplets = triplets_from_edges(i, n)
    assert triplets.shape[0] == 2 and triplets.dtype == np.int64
    as_list = [tuple(t) for t in triplets.T.tolist()]
    assert len(as_list) == len(set(as_list))  # no duplicates
    assert set(as_list) == brute_force_triplets(i, n)
    # each triplet is a pair (j, k) of distinct neighbours (or images) of one centre, j < k
    a, b = triplets
    assert np.all(i[a] == i[b]) and np.all(a < b)
    assert not np.any((j[a] == j[b]) & np.all(shifts[a] == shifts[b], axis=1))


def test_triplets_edge_cases():
    # centres with 0, 1, 2 and 4 edges (atom 1 has none, atom 4 is absent at the end)
    centers = np.array([0, 0, 2, 3, 3, 3, 3, 5], dtype=np.int64)
    triplets = triplets_from_edges(centers, 6)
    assert {tuple(t) for t in triplets.T.tolist()} == brute_force_triplets(centers, 6)
    assert triplets.shape == (2, 1 + 6)
    assert triplets_from_edges(np.zeros(0, dtype=np.int64), 3).shape == (2, 0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_skin_list_on_a_device_gives_the_searched_graph(device):
    """The skin list with a torch device (filtering and triplets there, kept pairs reused)
    gives exactly graph_arrays' edges, shifts and triplets at every step of a walk, in a
    sheared periodic cell; the search is repeated only after a move beyond skin/2."""
    atoms = periodic_cell().repeat((2, 1, 1))
    neighbors = SkinNeighborList(4.0, angular_cutoff=3.0, skin=1.0, device=device)
    rng = np.random.default_rng(5)
    for step in range(8):
        atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
        got = neighbors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        expected = graph_arrays(atoms.positions, atoms.cell.array, atoms.pbc, 4.0, 3.0)
        assert set(got) == set(expected)
        for key, value in got.items():
            assert torch.is_tensor(value) and value.device.type == device, key
            np.testing.assert_array_equal(value.cpu().numpy(), expected[key], err_msg=key)
    # some steps reused the kept pairs, some searched again
    assert 1 < neighbors.searches < 8, neighbors.searches
    assert triplets_from_edges(torch.tensor([0, 0, 0, 2], device=device), 3).tolist() == [
        [0, 0, 1], [1, 2, 2]]


def test_graph_triplets_use_angular_cutoff(acac_frames):
    """graph_arrays keeps only edges shorter than the angular cutoff in its triplets."""
    frame = acac_frames[3]
    graph = graph_arrays(frame.positions, frame.cell, frame.pbc, 4.0, angular_cutoff=2.5)
    i, j = graph[keys.EDGE_INDEX]
    r = np.linalg.norm(frame.positions[j] - frame.positions[i], axis=1)
    short = np.nonzero(r < 2.5)[0]
    expected = {(int(short[a]), int(short[b])) for a, b in
                brute_force_triplets(i[short], len(frame))}
    got = {tuple(t) for t in graph[keys.TRIPLETS].T.tolist()}
    assert got == expected and len(got) == graph[keys.TRIPLETS].shape[1]
    assert len(short) < len(i)  # the angular cutoff did remove edges
