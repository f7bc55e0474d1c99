"""The ASE integrator for each MD ensemble, and the quantity it conserves.

``nve``: velocity Verlet (the total energy is conserved). ``langevin``: Langevin dynamics
(no conserved quantity). ``nvt``: Bussi's stochastic velocity rescaling (default; the total
energy minus the energy the thermostat put in is conserved) or a Nosé–Hoover chain (its
extended energy is conserved). ``npt``: the Martyna–Tobias–Klein barostat with a Nosé–Hoover
chain thermostat, on the volume alone (isotropic) or on the whole cell (full); it needs a cell
periodic in all directions and a calculator with stress.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms, units
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT
from ase.md.verlet import VelocityVerlet

ENSEMBLES = ("nve", "langevin", "nvt", "npt")
THERMOSTATS = ("bussi", "nose-hoover")
BAROSTATS = ("isotropic", "full")


def default_tdamp(dt: float) -> float:
    """Thermostat time constant, fs: 100 time steps (ASE's advice for its integrators)."""
    return 100 * dt


def default_pdamp(dt: float) -> float:
    """Barostat time constant, fs: 1000 time steps (ASE's advice for the MTK barostat)."""
    return 1000 * dt


def make_dynamics(atoms: Atoms, ensemble: str, dt: float, temperature: float, rng,
                  thermostat: str = "bussi", friction: float = 0.01,
                  tdamp: float | None = None, pdamp: float | None = None,
                  pressure: float = 1e-4, barostat: str = "isotropic",
                  ) -> tuple[MolecularDynamics, Callable[[], float] | None]:
    """The integrator for ``ensemble`` and a function returning its conserved energy (eV;
    None for Langevin, which conserves nothing).

    Args:
        atoms: with calculator and initial momenta.  dt: time step, fs.  temperature: K.
        rng: numpy Generator (Langevin's and Bussi's noise).
        thermostat: "bussi" or "nose-hoover" (nvt; npt always uses a Nosé–Hoover chain).
        friction: Langevin friction, 1/fs.  tdamp, pdamp: thermostat and barostat time
            constants, fs (default 100 and 1000 time steps).
        pressure: external pressure, GPa (npt).  barostat: "isotropic" (volume only) or
            "full" (cell shape too), npt.
    """
    timestep = dt * units.fs
    tdamp = (default_tdamp(dt) if tdamp is None else tdamp) * units.fs
    pdamp = (default_pdamp(dt) if pdamp is None else pdamp) * units.fs
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=timestep)
        return dynamics, atoms.get_total_energy
    if ensemble == "langevin":
        return Langevin(atoms, timestep=timestep, temperature_K=temperature,
                        friction=friction / units.fs, rng=rng), None
    if ensemble == "nvt":
        if thermostat == "bussi":
            dynamics = Bussi(atoms, timestep=timestep, temperature_K=temperature, taut=tdamp,
                             rng=rng)
            return dynamics, lambda: atoms.get_total_energy() - dynamics.transferred_energy
        if thermostat == "nose-hoover":
            dynamics = NoseHooverChainNVT(atoms, timestep=timestep, temperature_K=temperature,
                                          tdamp=tdamp)
            return dynamics, dynamics.get_conserved_energy
        raise ValueError(f"thermostat must be one of {', '.join(THERMOSTATS)}, not "
                         f"{thermostat!r}")
    if ensemble == "npt":
        if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
            raise ValueError("npt needs a cell periodic in all three directions (the structure "
                             f"has pbc {atoms.pbc.tolist()} and volume "
                             f"{abs(atoms.cell.volume):.3g} Å³)")
        if barostat not in BAROSTATS:
            raise ValueError(f"barostat must be one of {', '.join(BAROSTATS)}, not "
                             f"{barostat!r}")
        integrator = IsotropicMTKNPT if barostat == "isotropic" else MTKNPT
        dynamics = integrator(atoms, timestep=timestep, temperature_K=temperature,
                              pressure_au=pressure * units.GPa, tdamp=tdamp, pdamp=pdamp)
        return dynamics, dynamics.get_conserved_energy
    raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, not {ensemble!r}")


def pressure_gpa(atoms: Atoms) -> float:
    """Instantaneous pressure, GPa: −trace(σ)/3 of the stress with the atoms' kinetic
    (ideal-gas) part, as the MTK barostat sees it."""
    stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
    return float(-np.trace(stress) / 3 / units.GPa)
