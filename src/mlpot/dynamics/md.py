"""Molecular dynamics with ASE integrators, a progress bar and an energy log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io import Trajectory
from ase.md import MDLogger
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from tqdm.auto import tqdm


try:  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution
    from ase.md.velocitydistribution import thermalize_momenta as thermalize
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize


class UnstableDynamics(RuntimeError):
    """The trajectory reached an unphysical configuration."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class UncertainDynamics(UnstableDynamics):
    """The ensemble's epistemic force uncertainty passed the threshold."""


def _largest_force_sigma(atoms: Atoms) -> tuple[int, float]:
    """(atom, σ) of the atom with the largest epistemic force σ, |σ_i| over x, y, z, eV/Å."""
    sigma = np.linalg.norm(atoms.calc.results["forces_std_epistemic"], axis=1)
    k = int(np.argmax(sigma))
    return k, float(sigma[k])


def _check_distances(atoms: Atoms, min_distance: float, step: int) -> None:
    from mlpot.neighbors import neighbor_pairs

    i, j, _, d = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, 1.0,
                                return_distances=True)
    if len(d) and d.min() < min_distance:
        k = int(np.argmin(d))
        raise UnstableDynamics(
            f"step {step}: atoms {i[k]} ({atoms.symbols[i[k]]}) and {j[k]} "
            f"({atoms.symbols[j[k]]}) are {d[k]:.3f} Å apart (< {min_distance} Å); the "
            "potential has left its training range", step)


def run_md(atoms: Atoms, calculator, steps: int, dt: float = 0.5, temperature: float = 300.0,
           ensemble: str = "nve", friction: float = 0.01, trajectory: str | Path | None = None,
           log: str | Path | None = None, interval: int = 10, seed: int = 0,
           progress: bool = True, min_distance: float | None = 0.6,
           max_force_sigma: float | None = None, on_uncertain: str = "stop") -> dict:
    """Run ``steps`` steps of NVE (velocity Verlet) or Langevin MD from ``atoms``.

    Args:
        dt: time step, fs.  temperature: K, for initial velocities and the Langevin bath.
        friction: Langevin friction, 1/fs.  interval: write trajectory/log every this many steps.
        min_distance: stop when two atoms come closer than this (Å; checked every
            ``interval`` steps; None disables). A potential that lets atoms collapse has left
            its training range, and the rest of such a trajectory is meaningless.
        max_force_sigma: threshold (eV/Å) on the largest per-atom epistemic force σ
            (|σ_i| over x, y, z; needs an ensemble), checked every ``interval`` steps.
        on_uncertain: "stop" ends the run there; "flag" records the step and goes on.
    Returns: summary with the total-energy drift per atom per ps (eV/atom/ps), the energy
        series (eV) at every logged step, ``stopped`` (None, or why and at which step), and
        with an ensemble the largest force σ at every logged step and the ``uncertain`` steps
        (step, atom, σ) beyond ``max_force_sigma``.
    """
    if on_uncertain not in ("stop", "flag"):
        raise ValueError(f"on_uncertain must be 'stop' or 'flag', not {on_uncertain!r}")
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=dt * units.fs)
    elif ensemble == "langevin":
        dynamics = Langevin(atoms, timestep=dt * units.fs, temperature_K=temperature,
                            friction=friction / units.fs, rng=rng)
    else:
        raise ValueError(f"ensemble must be 'nve' or 'langevin', not {ensemble!r}")
    times, totals, temperatures, sigmas, uncertain = [], [], [], [], []
    atoms.get_forces()
    has_sigma = "forces_std_epistemic" in atoms.calc.results
    if max_force_sigma is not None and not has_sigma:
        raise ValueError("max_force_sigma needs a calculator that predicts the epistemic "
                         "forces_std_epistemic (an ensemble or a last-layer model)")

    def record():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        times.append(dynamics.get_time() / (1000 * units.fs))  # ps
        totals.append(epot + ekin)
        temperatures.append(ekin / (1.5 * units.kB * len(atoms)))
        if min_distance:
            _check_distances(atoms, min_distance, dynamics.nsteps)
        if has_sigma:
            atom, sigma = _largest_force_sigma(atoms)
            sigmas.append(sigma)
            if max_force_sigma is not None and sigma > max_force_sigma:
                event = {"step": dynamics.nsteps, "atom": atom,
                         "symbol": atoms.get_chemical_symbols()[atom], "force_sigma": sigma}
                uncertain.append(event)
                if on_uncertain == "stop":
                    raise UncertainDynamics(
                        f"step {dynamics.nsteps}: atom {atom} ({event['symbol']}) has epistemic "
                        f"force σ {sigma:.3f} eV/Å > {max_force_sigma} eV/Å", dynamics.nsteps)

    dynamics.attach(record, interval=interval)
    if trajectory is not None:
        traj = Trajectory(str(trajectory), "w", atoms)
        dynamics.attach(traj.write, interval=interval)
    if log is not None:
        dynamics.attach(MDLogger(dynamics, atoms, str(log), header=True, stress=False,
                                 peratom=False, mode="w"), interval=interval)
    bar = tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress,
               mininterval=1.0)

    def tick():
        bar.update(1)
        if totals:
            bar.set_postfix_str(f"T {temperatures[-1]:.0f} K, E {totals[-1]:.4f} eV")

    dynamics.attach(tick, interval=1)
    stopped = None
    try:
        dynamics.run(steps)
    except UnstableDynamics as error:
        stopped = {"step": error.step, "reason": str(error),
                   "uncertain": isinstance(error, UncertainDynamics)}
    bar.close()
    if trajectory is not None:
        traj.close()
    drift = float(np.polyfit(times, totals, 1)[0] / len(atoms)) if len(times) > 2 else 0.0
    return {"steps": steps, "stopped": stopped, "dt_fs": dt, "ensemble": ensemble, "n_atoms": len(atoms),
            "energy_drift_eV_per_atom_per_ps": drift,
            "energy_fluctuation_eV": float(np.std(totals)) if totals else 0.0,
            "mean_temperature_K": float(np.mean(temperatures)) if temperatures else 0.0,
            "times_ps": times, "total_energies_eV": totals,
            "max_force_sigma_eV_per_A": sigmas if has_sigma else None, "uncertain": uncertain}
