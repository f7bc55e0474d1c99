"""Exported programs (torch.export .pt2) against the potential they came from."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from helpers import E0, frame, random_bpnn

from mlpot import keys
from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.export import ExportedCalculator, ExportedPotential, export_potential
from mlpot.serialize import save

CELL = np.array([[7.0, 0.3, 0.1], [0.2, 6.5, 0.4], [0.5, 0.1, 7.5]])  # triclinic, Å


def _periodic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return frame(rng.choice([1, 6, 8], n), rng.uniform(0, 1, (n, 3)) @ CELL, CELL)


def _assert_same(exported, potential, frames, stress: bool) -> None:
    for f in frames:
        reference = potential(potential.batch([f]), stress=stress)
        out = exported(f)
        assert out["energy"] == pytest.approx(float(reference[keys.ENERGY][0]), abs=1e-9)
        np.testing.assert_allclose(out["forces"], reference[keys.FORCES].detach().numpy(),
                                   atol=1e-10)
        if stress:
            np.testing.assert_allclose(out["stress"], reference[keys.STRESS][0].numpy(),
                                       atol=1e-10)


def test_cli_export_of_bpnn_equals_the_model(acac_frames, tmp_path):
    """`mlpot export` (a real subprocess) of a Behler–Parrinello model with stress: the
    program, loaded without mlpot's model code, gives the model's energy, forces and stress
    on molecules and a triclinic cell of other sizes than it was traced with, and through
    its ASE calculator the same as MlpotCalculator."""
    torch.set_num_threads(1)
    potential = random_bpnn(0)
    save(potential, tmp_path / "model")
    run = subprocess.run([sys.executable, "-m", "mlpot", "export", str(tmp_path / "model"),
                          str(tmp_path / "bpnn.pt2"), "--stress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    exported = ExportedPotential(tmp_path / "bpnn.pt2")
    assert exported.metadata["cutoff"] == potential.cutoff
    _assert_same(exported, potential, [acac_frames[0], acac_frames[5], _periodic(30, 1),
                                       _periodic(9, 2)], stress=True)
    atoms = Atoms(numbers=acac_frames[3].numbers, positions=acac_frames[3].positions)
    atoms.calc = ExportedCalculator(tmp_path / "bpnn.pt2")
    forces = atoms.get_forces()
    atoms.calc = MlpotCalculator(potential)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-10)
    # along a trajectory-like path its skin neighbour list gives a fresh search's results
    box = _periodic(30, 3)
    atoms = Atoms(numbers=box.numbers, positions=box.positions, cell=box.cell, pbc=True)
    skin = ExportedCalculator(tmp_path / "bpnn.pt2", skin=1.0)
    rng = np.random.default_rng(4)
    for _ in range(6):
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = skin
        with_skin = atoms.get_forces(), atoms.get_stress()
        atoms.calc = ExportedCalculator(tmp_path / "bpnn.pt2", skin=0)
        for ours, fresh in zip(with_skin, (atoms.get_forces(), atoms.get_stress())):
            np.testing.assert_allclose(ours, fresh, rtol=0, atol=1e-12)
    assert skin.neighbors.searches < 6
    with pytest.raises(ValueError, match="at least 2 atoms, edges and triplets"):
        exported(frame([1, 1], [[0, 0, 0], [0.74, 0, 0]]))  # H2: no triplets


def test_message_passing_model_exports(acac_frames, tmp_path):
    """A SchNet model (no triplets in its inputs) exports and matches on a molecule and a
    periodic cell."""
    from mlpot.config import config_from_dict
    from mlpot.train.run import build_potential, fit_statistics

    torch.set_num_threads(1)
    config = config_from_dict({"data": {"train": "x.xyz"},
                               "model": {"kind": "schnet", "size": "small", "cutoff": 4.0}})
    potential = build_potential(config, [1, 6, 8], E0).double()
    fit_statistics(potential, acac_frames[:10])
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in potential.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    exported = ExportedPotential(export_potential(potential.eval(), tmp_path / "schnet.pt2"))
    assert exported.metadata["inputs"][-1] == "edge_shift"  # no triplets
    _assert_same(exported, potential, [acac_frames[1], _periodic(25, 3)], stress=False)


def test_what_cannot_be_exported(tmp_path):
    from mlpot.physics.electrostatics import Electrostatics
    from mlpot.potential import Potential
    from mlpot.uncertainty.ensemble import Ensemble

    with pytest.raises(ValueError, match="single potential"):
        export_potential(Ensemble([random_bpnn(0), random_bpnn(1)]), tmp_path / "e.pt2")
    model = random_bpnn(0).model
    with pytest.raises(ValueError, match="long-range"):
        export_potential(Potential(model, E0, None, Electrostatics([1, 6, 8], 4.0)),
                         tmp_path / "c.pt2")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="AOTInductor needs a C++ compiler")
def test_aoti_package_equals_the_model(acac_frames, tmp_path):
    """The AOTInductor-compiled package (C++ shared library; needs the C++ compiler) gives
    the model's energy and forces, metadata included, on a molecule and a periodic cell."""
    torch.set_num_threads(1)
    potential = random_bpnn(1)
    exported = ExportedPotential(export_potential(potential, tmp_path / "bpnn_aoti.pt2",
                                                  aoti=True))
    assert exported.metadata["aoti"] and exported.metadata["cutoff"] == potential.cutoff
    _assert_same(exported, potential, [acac_frames[2], _periodic(20, 4)], stress=False)
