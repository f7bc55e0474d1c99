"""Molecular dynamics with ASE integrators, a progress bar and an energy log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io import Trajectory
from ase.md.velocitydistribution import Stationary, ZeroRotation

from mlpot.dynamics.integrators import ENSEMBLES, make_dynamics, pressure_gpa
from mlpot.progress import bar as progress_bar


try:  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution
    from ase.md.velocitydistribution import thermalize_momenta as thermalize
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize


class UnstableDynamics(RuntimeError):
    """The trajectory reached an unphysical configuration."""

    kind = "geometry"

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class UncertainDynamics(UnstableDynamics):
    """The ensemble's epistemic force uncertainty passed the threshold."""

    kind = "uncertain"


class RunawayDynamics(UnstableDynamics):
    """The temperature or the conserved energy left its bounds: the integration has failed."""

    kind = "runaway"


def _largest_force_sigma(atoms: Atoms) -> tuple[int, float]:
    """(atom, σ) of the atom with the largest epistemic force σ, |σ_i| over x, y, z, eV/Å
    (the quantity ``mlpot eval`` reports as force_sigma_max_atom, averaged over structures)."""
    from mlpot.uncertainty.calibration import largest_atom_force_sigma

    return largest_atom_force_sigma(atoms.calc.results["forces_std_epistemic"])


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


def _fragments(atoms: Atoms, distance: float) -> list[np.ndarray]:
    """The atoms split into fragments: groups with no atom within ``distance`` (Å) of another
    group's; largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from mlpot.neighbors import neighbor_pairs

    i, j, _ = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, distance)
    n = len(atoms)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return sorted(groups, key=len, reverse=True)


def _check_fragments(atoms: Atoms, distance: float, start: int, step: int) -> None:
    """Stop when the structure is in more pieces than the ``start`` it began in."""
    groups = _fragments(atoms, distance)
    if len(groups) > start:
        piece = groups[-1]
        names = ", ".join(f"{k} ({atoms.symbols[k]})" for k in piece[:5])
        names += f" and {len(piece) - 5} more" if len(piece) > 5 else ""
        which = f"atoms {names} are" if len(piece) > 1 else f"atom {names} is"
        raise UnstableDynamics(
            f"step {step}: the structure came apart into {len(groups)} fragments (it started "
            f"as {start}); {which} farther than {distance} Å from all others", step)


def default_max_temperature(temperature: float) -> float:
    """The temperature watchdog's default limit, K: max(3 T, T + 5000 K).

    A thermostatted system fluctuates around T by T·√(2/n_dof), and an NVE run from a
    minimum settles near T/2, so a healthy run stays well below 3 T. A structure started
    off its minimum heats as it relaxes, most in small molecules: a Cu₂ dimer released
    0.3 Å from its bond length (EMT) turns 0.27 eV/atom into 2100 K; hence the floor of
    5000 K (0.65 eV/atom of kinetic energy). A potential that releases energy it should not
    (atoms falling into a hole outside the training data, eV per atom) passes it within a
    few steps, as does a failing integrator."""
    return max(3.0 * temperature, temperature + 5000.0)


# eV/atom, 2 kT at 300 K: NVE copper at 1000 K strays 1 meV/atom with a 5 fs step, 11 with 15 fs
DEFAULT_MAX_ENERGY_DRIFT = 0.05


def check_md_settings(steps, dt, temperature, ensemble="nve", friction=0.01, interval=10,
                      tdamp=None, pdamp=None, pressure=1e-4, min_distance=None,
                      max_force_sigma=None, max_temperature=None, max_energy_drift=None,
                      fragment_distance=None) -> None:
    """Raise ValueError, naming the setting, for any that is out of range or not finite."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, not {ensemble!r}")

    def number(name, value, unit, minimum=0.0, strict=True, integer=False):
        ok = (isinstance(value, (int, np.integer)) if integer
              else isinstance(value, (int, float, np.number)) and np.isfinite(value))
        if ok and (value > minimum if strict else value >= minimum):
            return
        bound = f"{'>' if strict else '≥'} {minimum:g}"
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {bound}{unit}, not {value}")

    number("steps", steps, "", integer=True)
    number("interval", interval, " (steps)", integer=True)
    number("dt", dt, " fs")
    # a thermostat at 0 K has no temperature to hold (Nosé–Hoover's mass would be 0)
    number("temperature", temperature, " K", strict=ensemble != "nve")
    for name, value, unit, strict in (("friction", friction, " 1/fs", True),
                                      ("tdamp", tdamp, " fs", True),
                                      ("pdamp", pdamp, " fs", True),
                                      ("min_distance", min_distance, " Å", False),
                                      ("max_force_sigma", max_force_sigma, " eV/Å", True),
                                      ("max_temperature", max_temperature, " K", True),
                                      ("max_energy_drift", max_energy_drift, " eV/atom", True),
                                      ("fragment_distance", fragment_distance, " Å", True)):
        if value is not None:
            number(name, value, unit, strict=strict)
    if not (isinstance(pressure, (int, float, np.number)) and np.isfinite(pressure)):
        raise ValueError(f"pressure must be a finite number (GPa), not {pressure}")


class _Log:
    """The energy log: one line per recorded step, MDLogger's columns (time ps, energies eV,
    T K), then for NVT and NPT the conserved energy (eV; with the energy the thermostat and
    barostat exchanged), and for NPT the pressure (GPa), volume (Å³) and cell lengths (Å)."""

    def __init__(self, path, conserved: bool, npt: bool):
        self.handle = open(path, "w")
        self.npt = npt
        columns = ["Time[ps]", "Etot[eV]", "Epot[eV]", "Ekin[eV]", "T[K]"]
        columns += ["Econs[eV]"] * conserved
        columns += ["P[GPa]", "V[Å^3]", "a[Å]", "b[Å]", "c[Å]"] * npt
        self.handle.write(" ".join(f"{c:>12}" for c in columns) + "\n")

    def write(self, time, epot, ekin, temperature, conserved, atoms) -> None:
        values = [f"{time:12.4f}"] + [f"{x:12.4f}" for x in (epot + ekin, epot, ekin)]
        values.append(f"{temperature:12.1f}")
        if conserved is not None:
            values.append(f"{conserved:12.4f}")
        if self.npt:
            values += [f"{pressure_gpa(atoms):12.4f}", f"{atoms.cell.volume:12.3f}"]
            values += [f"{length:12.4f}" for length in atoms.cell.lengths()]
        self.handle.write(" ".join(values) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _drift(times, energies, n_atoms) -> float | None:
    """Slope of a straight line through the energies, eV/atom/ps (None below 3 points)."""
    if len(times) < 3:
        return None
    return float(np.polyfit(times, energies, 1)[0] / n_atoms)


def run_md(atoms: Atoms, calculator, steps: int, dt: float = 0.5, temperature: float = 300.0,
           ensemble: str = "nve", friction: float = 0.01, trajectory: str | Path | None = None,
           log: str | Path | None = None, interval: int = 10, seed: int = 0,
           progress: bool = True, min_distance: float | None = 0.6,
           max_force_sigma: float | None = None, on_uncertain: str = "stop",
           thermostat: str = "bussi", tdamp: float | None = None, pdamp: float | None = None,
           pressure: float = 1e-4, barostat: str = "isotropic",
           max_temperature: float | None | str = "auto",
           max_energy_drift: float | None | str = "auto",
           fragment_distance: float | None = None) -> dict:
    """Run ``steps`` steps of MD from ``atoms`` (velocities drawn at ``temperature``).

    Args:
        ensemble: "nve" (velocity Verlet), "langevin", "nvt" (``thermostat`` "bussi" or
            "nose-hoover") or "npt" (MTK barostat, ``barostat`` "isotropic" or "full";
            needs a periodic cell); see :mod:`mlpot.dynamics.integrators`.
        dt: time step, fs.  temperature: K, for initial velocities and the thermostat.
        friction: Langevin friction, 1/fs.  tdamp, pdamp: thermostat and barostat time
            constants, fs (default 100 and 1000 steps).  pressure: GPa (npt; default 1 bar).
        interval: write trajectory/log every this many steps.
        min_distance: stop when two atoms come closer than this (Å; checked every
            ``interval`` steps; None disables). A potential that lets atoms collapse has left
            its training range, and the rest of such a trajectory is meaningless.
        fragment_distance: non-periodic structures: stop when they come apart into more
            fragments (no atom within this distance, Å, of another fragment's) than they
            started in (checked every ``interval`` steps; None disables).
        max_temperature: stop when the instantaneous temperature (K, checked every step)
            passes it; "auto": :func:`default_max_temperature`; None disables.
        max_energy_drift: stop when the conserved energy (NVE: the total energy; NVT, NPT:
            with the thermostat's and barostat's) has moved more than this from its start,
            eV/atom (checked every step); "auto": ``DEFAULT_MAX_ENERGY_DRIFT``; None disables.
        max_force_sigma: threshold (eV/Å) on the largest per-atom epistemic force σ
            (|σ_i| over x, y, z; needs an ensemble), checked every ``interval`` steps.
        on_uncertain: "stop" ends the run there; "flag" records the step and goes on.
    Returns: summary with the energy series (eV) at every logged step; for NVE the
        total-energy drift per atom per ps (eV/atom/ps), for NVT and NPT the conserved
        energy's (``conserved_energy_drift_eV_per_atom_per_ps``), for Langevin neither;
        ``stopped`` (None, or why, at which step, and its ``kind``: "geometry", "uncertain"
        or "runaway"; the stopping step's frame is the trajectory's last); with an ensemble
        the largest force σ at every logged step and the ``uncertain`` steps (step, atom, σ)
        beyond ``max_force_sigma``. For NPT also the volumes (Å³) and pressures (GPa).
    """
    if on_uncertain not in ("stop", "flag"):
        raise ValueError(f"on_uncertain must be 'stop' or 'flag', not {on_uncertain!r}")
    if max_temperature == "auto":
        max_temperature = default_max_temperature(temperature)
    if max_energy_drift == "auto":
        max_energy_drift = DEFAULT_MAX_ENERGY_DRIFT
    check_md_settings(steps, dt, temperature, ensemble, friction, interval, tdamp, pdamp,
                      pressure, min_distance, max_force_sigma, max_temperature,
                      max_energy_drift, fragment_distance)
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    try:
        dynamics, conserved_energy = make_dynamics(
            atoms, ensemble, dt, temperature, rng, thermostat=thermostat, friction=friction,
            tdamp=tdamp, pdamp=pdamp, pressure=pressure, barostat=barostat)
    except NotImplementedError as error:  # ASE's MTK integrators refuse constraints
        raise ValueError(f"{ensemble}: {error} (the structure has {atoms.constraints})") \
            from error
    npt = ensemble == "npt"
    n_atoms = len(atoms)
    times, totals, conserved, temperatures, sigmas, uncertain = [], [], [], [], [], []
    volumes, pressures = [], []
    atoms.get_forces()
    has_sigma = "forces_std_epistemic" in atoms.calc.results
    if max_force_sigma is not None and not has_sigma:
        raise ValueError("max_force_sigma needs a calculator that predicts the epistemic "
                         "forces_std_epistemic (an ensemble or a last-layer model)")
    start_energy = conserved_energy() if conserved_energy is not None else None
    start_fragments = (len(_fragments(atoms, fragment_distance))
                       if fragment_distance and not atoms.pbc.any() else None)
    traj = Trajectory(str(trajectory), "w", atoms) if trajectory is not None else None
    # NVE's conserved energy is the total energy, already a column
    extended_energy = conserved_energy if ensemble != "nve" else None
    logger = _Log(log, extended_energy is not None, npt) if log is not None else None
    written = []  # steps whose frame is in the trajectory and the log

    def temperature_now() -> float:
        return atoms.get_kinetic_energy() / (1.5 * units.kB * n_atoms)

    def write_frame() -> None:
        """The current frame into the trajectory and the log (once per step)."""
        step = dynamics.nsteps
        if written and written[-1] == step:
            return
        written.append(step)
        if traj is not None:
            traj.write()
        if logger is not None:
            logger.write(dynamics.get_time() / (1000 * units.fs), atoms.get_potential_energy(),
                         atoms.get_kinetic_energy(), temperature_now(),
                         extended_energy() if extended_energy is not None else None, atoms)

    def record():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        times.append(dynamics.get_time() / (1000 * units.fs))  # ps
        totals.append(epot + ekin)
        temperatures.append(temperature_now())
        if conserved_energy is not None:
            conserved.append(conserved_energy())
        if npt:
            volumes.append(float(atoms.cell.volume))
            pressures.append(pressure_gpa(atoms))
        write_frame()
        if min_distance:
            _check_distances(atoms, min_distance, dynamics.nsteps)
        if start_fragments is not None:
            _check_fragments(atoms, fragment_distance, start_fragments, dynamics.nsteps)
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

    def watch():
        """Every step: the temperature and the conserved energy within their bounds."""
        step = dynamics.nsteps
        now = temperature_now()
        if max_temperature and not now <= max_temperature:  # also catches NaN
            write_frame()
            raise RunawayDynamics(
                f"step {step}: temperature {now:.4g} K > {max_temperature:.4g} K (the "
                "potential releases energy it should not, or the time step is too long)", step)
        if max_energy_drift and start_energy is not None:
            change = (conserved_energy() - start_energy) / n_atoms
            if not abs(change) <= max_energy_drift:
                write_frame()
                name = "total" if ensemble == "nve" else "conserved"
                raise RunawayDynamics(
                    f"step {step}: the {name} energy moved {change:+.4g} eV/atom from its "
                    f"start (> {max_energy_drift} eV/atom): the integration has failed (time "
                    "step too long, or forces not smooth)", step)

    dynamics.attach(record, interval=interval)
    dynamics.attach(watch, interval=1)
    bar = progress_bar(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress,
               mininterval=1.0)

    def tick():
        if dynamics.nsteps:  # not the starting frame
            bar.update(1)
        if totals:
            bar.set_postfix_str(f"T {temperatures[-1]:.0f} K, E {totals[-1]:.4f} eV")

    dynamics.attach(tick, interval=1)
    stopped = None
    try:
        dynamics.run(steps)
    except UnstableDynamics as error:
        stopped = {"step": error.step, "reason": str(error), "kind": error.kind,
                   "uncertain": isinstance(error, UncertainDynamics)}
    finally:
        bar.close()
        if traj is not None:
            traj.close()
        if logger is not None:
            logger.close()
    summary = {"steps": steps, "stopped": stopped, "dt_fs": dt, "ensemble": ensemble,
               "n_atoms": n_atoms, "frames_written": len(written),
               "energy_drift_eV_per_atom_per_ps": (_drift(times, totals, n_atoms)
                                                   if ensemble == "nve" else None),
               "conserved_energy_drift_eV_per_atom_per_ps": (
                   _drift(times, conserved, n_atoms) if ensemble in ("nvt", "npt") else None),
               "energy_fluctuation_eV": float(np.std(totals)) if totals else 0.0,
               "mean_temperature_K": float(np.mean(temperatures)) if temperatures else 0.0,
               "times_ps": times, "total_energies_eV": totals,
               "max_force_sigma_eV_per_A": sigmas if has_sigma else None,
               "uncertain": uncertain}
    if extended_energy is not None:
        summary["conserved_energies_eV"] = conserved
    if npt:
        summary.update(volumes_A3=volumes, pressures_GPa=pressures,
                       final_cell_A=np.asarray(atoms.cell).tolist())
    return summary


EXIT_CODES = {"geometry": 3, "uncertain": 4, "runaway": 5}  # `mlpot md`, by stopped["kind"]
