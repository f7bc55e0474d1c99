"""MD stops, and says where, when atoms collapse onto each other (or, earlier, when the
collapse heats them past the temperature watchdog)."""

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlpot.dynamics.md import run_md


class Collapse(Calculator):
    """E = k Σ_{i<j} r_ij²: every pair attracts, with no repulsive wall (eV, Å)."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        x = self.atoms.positions
        diff = x[:, None, :] - x[None, :, :]
        self.results["energy"] = 0.5 * 5.0 * float((diff**2).sum())
        self.results["forces"] = -2 * 5.0 * diff.sum(axis=1)


def test_collapse_stops_md_with_step_and_atoms(tmp_path):
    atoms = Atoms("H2", positions=[[0, 0, 0], [1.6, 0, 0]])
    # the temperature and energy watchdogs off: this is about the distance check
    summary = run_md(atoms, Collapse(), steps=2000, dt=0.5, temperature=10, interval=1,
                     trajectory=tmp_path / "md.traj", progress=False, max_temperature=None,
                     max_energy_drift=None)
    assert summary["stopped"] is not None
    assert 0 < summary["stopped"]["step"] < 2000
    assert "atoms 0 (H) and 1 (H)" in summary["stopped"]["reason"]
    assert summary["stopped"]["kind"] == "geometry"
    # with them on (default: max(3 T, T + 5000 K), 0.05 eV/atom) the run stops earlier
    heated = run_md(atoms, Collapse(), steps=2000, dt=0.5, temperature=10, interval=1,
                    progress=False)
    assert heated["stopped"]["kind"] == "runaway"
    assert heated["stopped"]["step"] < summary["stopped"]["step"]


def test_bound_system_runs_to_the_end(tmp_path):
    from ase.calculators.emt import EMT

    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    summary = run_md(atoms, EMT(), steps=200, dt=1.0, temperature=100, progress=False)
    assert summary["stopped"] is None
    assert np.isfinite(summary["energy_fluctuation_eV"])
