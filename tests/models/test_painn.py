"""PaiNN's own properties: equivariant vector features and the safe norm under force training
(save/load, training and the command line are in ``test_message_passing.py``).

The invariants of the energy (forces, symmetries, locality and receptive field, isolated atoms,
smoothness) are checked for PaiNN with every other model in ``tests/physics/test_invariants.py``.
"""


import numpy as np
import pytest
import torch

from helpers import frame, orthogonal

from mlpot import keys
from mlpot.models import PaiNN
from mlpot.potential import Potential

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}


def _random_painn(dtype=torch.float64) -> Potential:
    """Seeded default initialisation, polynomial cutoff, nonzero coordination energies."""
    torch.manual_seed(4)
    model = PaiNN([1, 6, 8], cutoff=4.0, n_features=8, n_interactions=2, n_rbf=6,
                  cutoff_function="polynomial")
    model.set_statistics(0.5, torch.tensor([-0.4, -1.2, -0.9]))
    return Potential(model, E0).to(dtype)


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_vector_features_are_equivariant(acac_frames, proper):
    """v_i(Q r) = Q v_i(r) and s_i(Q r) = s_i(r) for an orthogonal Q (det ±1), in a molecule
    and a periodic cell (cell rotated too); forces rotate with Q, energies do not change."""
    rng = np.random.default_rng(21 + proper)
    q = orthogonal(rng, proper)
    potential = _random_painn().eval()
    model = potential.model
    cell = np.array([[7.5, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.8, 7.2]])
    frames = [acac_frames[0], frame(acac_frames[1].numbers, acac_frames[1].positions, cell)]
    shift = rng.normal(size=3)
    moved = [frame(f.numbers, f.positions @ q.T + shift, f.cell @ q.T if f.pbc.all() else None)
             for f in frames]
    n = sum(len(f) for f in frames)
    batch, batch_moved = potential.batch(frames), potential.batch(moved)
    s, v = (x.detach()[:n] for x in model.features(batch))
    s_q, v_q = (x.detach()[:n] for x in model.features(batch_moved))
    q_t = torch.as_tensor(q)
    assert float(v.norm(dim=1).min()) > 1e-3  # every atom has non-trivial vector features
    torch.testing.assert_close(s_q, s, rtol=0, atol=1e-10 * float(s.abs().max()))
    rotated = torch.einsum("ab,nbf->naf", q_t, v)
    torch.testing.assert_close(v_q, rotated, rtol=0, atol=1e-10 * float(v.abs().max()))

    out, out_q = potential(batch), potential(batch_moved)
    forces = out[keys.FORCES].detach()
    assert float(forces.abs().max()) > 1e-2
    torch.testing.assert_close(out_q[keys.FORCES].detach(), forces @ q_t.T, rtol=0,
                               atol=1e-10 * float(forces.abs().max()))
    torch.testing.assert_close(out_q[keys.ENERGY], out[keys.ENERGY], rtol=0, atol=1e-9)


def test_force_training_is_finite_where_vectors_vanish():
    """At the centre of a symmetric linear O=C=O the vector features cancel exactly (V v = 0),
    as they do for an isolated atom and the ghosts: the safe norm keeps the parameter gradient
    of a force loss (a second derivative) finite there."""
    potential = _random_painn().train()
    co2 = frame([8, 6, 8], [[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]])
    lone = frame([1], [[0.0, 0.0, 0.0]])
    batch = potential.batch([co2, lone])
    _, v = potential.model.features(batch)
    assert torch.all(v[1] == 0) and torch.all(v[3] == 0)  # the carbon, the lone H
    assert float(v[0].detach().abs().max()) > 1e-3  # the oxygens' vectors do not vanish
    out = potential(batch, forces=True, create_graph=True)
    loss = (out[keys.FORCES] ** 2).sum() + out[keys.ENERGY].sum() * 1e-3
    grads = torch.autograd.grad(loss, [p for p in potential.parameters() if p.requires_grad])
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
