"""The equivariant (MACE-style, e3nn) model's own properties: tensor features transform with
their Wigner matrices, the dense channel-wise product is equivariant and matches e3nn's own
tensor product path by path, body order grows with the correlation.

Energy invariants, forces, stress, locality and receptive field, isolated atoms, smoothness,
save/load, training and the CLI are in ``tests/physics/test_invariants.py`` and
``test_message_passing.py`` with the other models.
"""

import numpy as np
import pytest
import torch
from e3nn import o3

from helpers import frame, orthogonal

from mlpot import keys
from mlpot.models.equivariant import (ChannelwiseProduct, Equivariant, from_channels,
                                      natural_irreps, to_channels)
from mlpot.potential import Potential

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}


def _wigner(irreps: o3.Irreps, q: torch.Tensor) -> torch.Tensor:
    """Block-diagonal D(Q) of natural-parity irreps, fitted from spherical harmonics:
    Y_l(Q x) = D^l(Q) Y_l(x) for 50 random x, solved by least squares in float64 (exact to
    ~1e-15; e3nn's D_from_matrix/D_from_angles carry ~1e-7 errors from float32 tables).
    Parity comes out right because Y_l(−x) = (−1)^l Y_l(x)."""
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    blocks = []
    for mul, ir in irreps:
        assert ir.p == (-1) ** ir.l
        y, y_q = (o3.spherical_harmonics(ir.l, v, normalize=True) for v in (x, x @ q.T))
        blocks += [torch.linalg.lstsq(y, y_q).solution.T] * mul
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_tensor_features_are_equivariant(acac_frames, proper):
    """h_t(Q r) = D_t(Q) h_t(r) for every layer's features (scalars, vectors; parity included:
    a reflection flips 1o vectors with Q itself, 0e scalars stay), in a molecule and a
    triclinic periodic cell; forces rotate with Q and energies do not change."""
    rng = np.random.default_rng(31 + proper)
    q = orthogonal(rng, proper)
    q_t = torch.as_tensor(q)
    torch.manual_seed(3)
    model = Equivariant([1, 6, 8], cutoff=4.0, n_features=6, n_interactions=3, n_rbf=6,
                        l_max=3, hidden_l=2, correlation=3, radial_hidden=16)
    model.set_statistics(0.5, torch.tensor([-0.4, -1.2, -0.9]), mean_neighbours=8.0)
    potential = Potential(model, E0).double().eval()
    cell = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])
    frames = [acac_frames[0], frame(acac_frames[1].numbers, acac_frames[1].positions, cell)]
    shift = rng.normal(size=3)
    moved = [frame(f.numbers, f.positions @ q.T + shift, f.cell @ q.T if f.pbc.all() else None)
             for f in frames]
    n = sum(len(f) for f in frames)
    layers = model.features(potential.batch(frames))[0]
    layers_q = model.features(potential.batch(moved))[0]
    assert [str(i) for i in model.feature_irreps] == ["6x0e+6x1o+6x2e", "6x0e+6x1o+6x2e",
                                                      "6x0e"]
    for irreps, h, h_q in zip(model.feature_irreps, layers, layers_q):
        h, h_q = h.detach()[:n], h_q.detach()[:n]
        expected = h @ _wigner(irreps, q_t).T
        assert float(h[:, 6:].abs().max() if irreps.lmax else 1.0) > 1e-3  # not all zero
        torch.testing.assert_close(h_q, expected, rtol=0, atol=1e-10 * float(h.abs().max()))

    out, out_q = potential(potential.batch(frames)), potential(potential.batch(moved))
    forces = out[keys.FORCES].detach()
    torch.testing.assert_close(out_q[keys.FORCES].detach(), forces @ q_t.T, rtol=0,
                               atol=1e-10 * float(forces.abs().max()))
    torch.testing.assert_close(out_q[keys.ENERGY], out[keys.ENERGY], rtol=0, atol=1e-9)


def test_channelwise_product_is_equivariant_and_matches_e3nn():
    """The dense product equals e3nn's TensorProduct ('uuu', one path at a time, same Wigner 3j
    with component normalisation), and commutes with rotations: P(D x, D y) = D P(x, y)."""
    torch.manual_seed(0)
    l_max, channels = 2, 3
    irreps = natural_irreps(channels, l_max)
    product = ChannelwiseProduct(l_max, l_max, channels, n_elements=2).double()
    x_e3nn, y_e3nn = irreps.randn(5, -1, dtype=torch.float64), irreps.randn(5, -1,
                                                                            dtype=torch.float64)
    x, y = to_channels(x_e3nn, irreps), to_channels(y_e3nn, irreps)
    torch.testing.assert_close(from_channels(x, irreps), x_e3nn, rtol=0, atol=0)
    species = torch.tensor([0, 1, 1, 0, 1])
    out = product(x, y, species)

    # rotation (and parity) equivariance
    d = _wigner(irreps, torch.as_tensor(orthogonal(np.random.default_rng(2), proper=False)))
    rotated = product(to_channels(x_e3nn @ d.T, irreps), to_channels(y_e3nn @ d.T, irreps),
                      species)
    torch.testing.assert_close(from_channels(rotated, irreps), from_channels(out, irreps) @ d.T,
                               rtol=0, atol=1e-12)

    # path by path against e3nn: same irreps in, same irrep out, per-channel weight 1
    one = o3.Irreps([(channels, ir) for _, ir in irreps])
    product.weight.data.zero_()
    paths = [(l1, l2, l3) for l1 in range(3) for l2 in range(3) for l3 in range(3)
             if (l1 + l2 + l3) % 2 == 0 and abs(l1 - l2) <= l3 <= l1 + l2]
    assert len(paths) == product.weight.shape[2]
    for p, (l1, l2, l3) in enumerate(paths):
        product.weight.data.zero_()
        product.weight.data[:, :, p] = 1.0
        ours = from_channels(product(x, y, species), irreps)
        reference = o3.TensorProduct(one, one, one, [(l1, l2, l3, "uuu", False)],
                                     irrep_normalization="component",
                                     path_normalization="none").double()(x_e3nn, y_e3nn)
        fan_in = sum(1 for path in paths if path[2] == l3)
        # e3nn folds its normalisation constants in float32 (relative error ~1e-8); the
        # rotation check above holds to 1e-12
        torch.testing.assert_close(ours * fan_in ** 0.5, reference, rtol=0,
                                   atol=1e-7 * float(reference.abs().max()))


def test_correlation_raises_body_order():
    """With ν = 1 (no product) and a linear readout, a one-layer model's atomic energy is a
    sum of pair terms, so moving two neighbours together changes it by the sum of moving each
    alone (E(a+b) − E(a) − E(b) + E(0) = 0 for atom 0); ν = 2 adds three-body terms."""
    rng = np.random.default_rng(4)
    positions = np.array([[0.0, 0, 0], [1.2, 0, 0], [0, 1.3, 0], [-0.7, -0.2, 1.1]])
    numbers = [6, 1, 1, 8]
    results = {}
    for correlation in (1, 2):
        torch.manual_seed(1)
        model = Equivariant([1, 6, 8], cutoff=4.0, n_features=4, n_interactions=1, n_rbf=4,
                            l_max=2, hidden_l=0, correlation=correlation)
        model.readouts[-1] = torch.nn.Linear(4, 1)  # the default MLP readout is not additive
        potential = Potential(model, E0).double()
        step_a, step_b = rng.normal(size=3) * 0.1, rng.normal(size=3) * 0.1
        energies = []
        for da, db in [(0, 0), (step_a, 0), (0, step_b), (step_a, step_b)]:
            moved = positions.copy()
            moved[1] += da
            moved[2] += db
            out = potential(potential.batch([frame(numbers, moved)]), forces=False)
            energies.append(float(out[keys.ATOMIC_ENERGY][0]))
        e00, ea, eb, eab = energies
        results[correlation] = (abs(eab - ea - eb + e00), abs(ea - e00))
    assert results[1][0] < 1e-12 * max(1.0, results[1][1]) + 1e-13
    assert results[2][0] > 1e-6


def test_deepcopy_keeps_keys_and_outputs(acac_frames):
    """The trainer's weight average deep-copies the model: the copy has the same state keys
    (e3nn's compiled products gain constant buffers when deep-copied as they are) and predicts
    the same energies and forces."""
    import copy

    torch.manual_seed(2)
    model = Equivariant([1, 6, 8], cutoff=4.0, n_features=4, n_interactions=2, n_rbf=4,
                        l_max=3, hidden_l=1)
    potential = Potential(model, E0).double()
    clone = copy.deepcopy(potential)
    assert set(clone.state_dict()) == set(potential.state_dict())
    assert [p.shape for p in clone.parameters()] == [p.shape for p in potential.parameters()]
    assert [b.shape for b in clone.buffers()] == [b.shape for b in potential.buffers()]
    batch = potential.batch(acac_frames[:2])
    ours, theirs = potential(batch), clone(batch)
    for key in (keys.ENERGY, keys.FORCES):
        assert torch.equal(ours[key], theirs[key])
