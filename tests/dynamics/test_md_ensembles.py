"""run_md's ensembles (NVE, Langevin, NVT with Bussi or a Nosé–Hoover chain, NPT with the MTK
barostat), its watchdogs and its argument checks, on ASE's EMT copper: cheap, smooth, and an
independent reference (EMT's own cell relaxation under pressure) for the NPT volume."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from mlpot.dynamics.md import check_md_settings, default_max_temperature, run_md


def copper(repeat=(2, 2, 2)) -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True) * repeat  # 32 atoms


def copper_cluster() -> Atoms:
    """A 13-atom Cu icosahedron, no cell: a molecule."""
    from ase.cluster import Icosahedron

    return Icosahedron("Cu", 2)


def kinetic_temperatures(path) -> np.ndarray:
    """Instantaneous temperatures (K, 3N degrees of freedom) of a trajectory's frames."""
    frames = read(path, index=":")
    return np.array([f.get_kinetic_energy() / (1.5 * units.kB * len(f)) for f in frames])


@pytest.mark.parametrize("ensemble, thermostat", [("nve", None), ("langevin", None),
                                                  ("nvt", "bussi"), ("nvt", "nose-hoover")])
def test_thermostats_hold_the_target_temperature(ensemble, thermostat, tmp_path):
    """From a perfect lattice with 300 K velocities, NVE shares the kinetic energy with the
    potential and settles near 150 K (equipartition); each thermostat brings it to 300 K.
    Temperatures are recomputed from the trajectory's momenta, not taken from the summary."""
    summary = run_md(copper(), EMT(), steps=300, dt=4.0, temperature=300.0, ensemble=ensemble,
                     thermostat=thermostat or "bussi", tdamp=50.0, friction=0.02, interval=3,
                     seed=4, progress=False, trajectory=tmp_path / "md.traj")
    assert summary["stopped"] is None
    temperatures = kinetic_temperatures(tmp_path / "md.traj")
    assert len(temperatures) == 300 // 3 + 1
    mean = temperatures[len(temperatures) // 3:].mean()  # after 400 fs
    print(f"\n{ensemble} {thermostat or ''}: mean T {mean:.0f} K")
    if ensemble == "nve":
        assert 120 < mean < 180
        assert summary["conserved_energy_drift_eV_per_atom_per_ps"] is None
        assert abs(summary["energy_drift_eV_per_atom_per_ps"]) < 1e-3  # eV/atom/ps
    else:
        # 32 atoms: T fluctuates by √(2/96) ≈ 14 % per frame; ~100 frames averaged
        assert mean == pytest.approx(300.0, rel=0.08)
        assert summary["energy_drift_eV_per_atom_per_ps"] is None
    if ensemble == "nvt":
        # the energy the thermostat exchanged is accounted for: the conserved quantity stays
        conserved = np.array(summary["conserved_energies_eV"])
        totals = np.array(summary["total_energies_eV"])
        assert np.ptp(totals) > 0.1  # the thermostat put energy in
        assert np.ptp(conserved) < 0.05 * np.ptp(totals)
        assert abs(summary["conserved_energy_drift_eV_per_atom_per_ps"]) < 1e-3
    if ensemble == "langevin":
        assert "conserved_energies_eV" not in summary
        assert summary["conserved_energy_drift_eV_per_atom_per_ps"] is None


def static_volume(pressure_gpa: float) -> float:
    """EMT's Cu volume (Å³ per 32 atoms) at 0 K under ``pressure_gpa``: the cell relaxed with
    ASE's FrechetCellFilter."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = copper()
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms, scalar_pressure=pressure_gpa * units.GPa),
         logfile=None).run(fmax=1e-4, steps=200)
    return atoms.get_volume()


@pytest.mark.slow
def test_npt_finds_the_volume_under_pressure(tmp_path):
    """MTK NPT at 0 and 4 GPa: the cell shrinks by the ratio EMT's own relaxation under
    pressure gives (thermal expansion at 300 K shifts both alike); the log holds pressure,
    volume and cell lengths, and the mean logged pressure is the target."""
    volumes = {}
    for pressure in (0.0, 4.0):
        log = tmp_path / f"{pressure}.log"
        summary = run_md(copper(), EMT(), steps=300, dt=5.0, temperature=300.0, ensemble="npt",
                         pressure=pressure, tdamp=100.0, pdamp=250.0, interval=3, seed=3,
                         progress=False, log=log)
        assert summary["stopped"] is None
        header, *rows = log.read_text().splitlines()
        assert header.split()[-5:] == ["P[GPa]", "V[Å^3]", "a[Å]", "b[Å]", "c[Å]"]
        table = np.array([row.split() for row in rows], dtype=float)
        pressures, logged_volumes, lengths = table[:, -5], table[:, -4], table[:, -3:]
        np.testing.assert_allclose(logged_volumes, summary["volumes_A3"], rtol=0, atol=6e-4)
        np.testing.assert_allclose(lengths.prod(axis=1), logged_volumes, rtol=1e-4)  # cubic
        assert np.ptp(lengths[:, 0]) > 0.01  # the cell moved
        half = len(rows) // 2
        print(f"\nNPT {pressure} GPa: mean P {pressures[half:].mean():.2f} GPa, "
              f"V {logged_volumes[half:].mean():.1f} Å³")
        assert pressures[half:].mean() == pytest.approx(pressure, abs=0.6)  # GPa
        volumes[pressure] = logged_volumes[half:].mean()
    ratio = volumes[4.0] / volumes[0.0]
    reference = static_volume(4.0) / static_volume(0.0)
    print(f"V(4 GPa)/V(0): MD {ratio:.4f}, EMT relaxed {reference:.4f}")
    assert reference < 0.99  # the pressure matters
    assert ratio == pytest.approx(reference, abs=0.006)


def test_full_cell_npt_runs_and_npt_needs_a_periodic_cell(tmp_path):
    summary = run_md(copper(), EMT(), steps=40, dt=2.0, temperature=300.0, ensemble="npt",
                     barostat="full", pressure=10.0, pdamp=100.0, interval=10, progress=False)
    assert summary["stopped"] is None and len(summary["pressures_GPa"]) == 5
    assert summary["volumes_A3"][-1] < summary["volumes_A3"][0]  # 10 GPa squeezes it
    with pytest.raises(ValueError, match="npt needs a cell periodic in all three directions"):
        run_md(copper_cluster(), EMT(), steps=10, ensemble="npt", progress=False)


def test_a_run_stopped_at_step_zero_keeps_the_starting_frame(tmp_path):
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [0.4, 0, 0], [3.0, 0, 0]])
    summary = run_md(atoms, EMT(), steps=50, trajectory=tmp_path / "md.traj",
                     log=tmp_path / "md.log", progress=False)
    assert summary["stopped"]["step"] == 0 and summary["stopped"]["kind"] == "geometry"
    assert "atoms 0 (Cu) and 1 (Cu) are 0.400 Å apart" in summary["stopped"]["reason"]
    frames = read(tmp_path / "md.traj", index=":")
    assert len(frames) == 1 and summary["frames_written"] == 1
    np.testing.assert_allclose(frames[0].positions, atoms.positions, atol=1e-12)
    assert len((tmp_path / "md.log").read_text().splitlines()) == 2  # header + step 0


@pytest.mark.parametrize("ensemble", ["nve", "langevin"])
def test_a_molecule_at_a_million_kelvin_is_stopped(ensemble, tmp_path):
    """10⁶ K: the cluster flies apart (EMT is smooth, so NVE even conserves energy while it
    does); the fragment check stops it within a few hundred fs, the trajectory's last frame
    showing the piece that left. Without the check it runs to the end, tens of Å across."""
    hot = dict(steps=300, temperature=1e6, interval=5, progress=False, ensemble=ensemble)
    summary = run_md(copper_cluster(), EMT(), fragment_distance=4.0,
                     trajectory=tmp_path / "hot.traj", **hot)
    stopped = summary["stopped"]
    assert stopped["kind"] == "geometry" and "came apart" in stopped["reason"], stopped
    last = read(tmp_path / "hot.traj", index=-1)
    # brute force: the atoms within 4 Å of one another, grown from atom 0, are not all
    distances = np.linalg.norm(last.positions[:, None] - last.positions[None], axis=-1)
    reached = {0}
    while True:
        grown = reached | set(np.flatnonzero((distances[sorted(reached)] < 4.0).any(axis=0)))
        if grown == reached:
            break
        reached = grown
    assert len(reached) < len(last)
    free = run_md(copper_cluster(), EMT(), trajectory=tmp_path / "free.traj", **hot)
    assert free["stopped"] is None  # the check is what stopped it
    extent = np.ptp(read(tmp_path / "free.traj", index=-1).positions, axis=0).max()
    stopped_extent = np.ptp(last.positions, axis=0).max()
    print(f"\n{ensemble} at 10⁶ K: stopped at step {stopped['step']}, {stopped_extent:.1f} Å "
          f"across; unchecked {extent:.1f} Å across after {hot['steps']} steps")
    assert extent > 2 * stopped_extent


def test_the_temperature_watchdog_stops_a_heating_run():
    """A thermostat at 3000 K with a limit of 1000 K stops within its first steps."""
    summary = run_md(copper(), EMT(), steps=200, dt=2.0, temperature=3000.0, ensemble="nvt",
                     tdamp=10.0, max_temperature=1000.0, progress=False)
    assert summary["stopped"]["kind"] == "runaway"
    assert "temperature" in summary["stopped"]["reason"] and "> 1000 K" in \
        summary["stopped"]["reason"]
    assert default_max_temperature(300.0) == 5300.0 and default_max_temperature(4000) == 12000


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-300.0), "temperature must be a finite number ≥ 0 K, not -300.0"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=0.0, ensemble="nvt"), "temperature must be a finite number > 0 K"),
    (dict(steps=0), "steps must be an integer > 0, not 0"),
    (dict(steps=-5), "steps must be an integer > 0"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(dt=0.0), "dt must be a finite number > 0 fs"),
    (dict(dt=float("inf")), "dt must be a finite number > 0 fs, not inf"),
    (dict(interval=0), "interval must be an integer > 0"),
    (dict(friction=-0.01, ensemble="langevin"), "friction must be a finite number > 0"),
    (dict(tdamp=0.0, ensemble="nvt"), "tdamp must be"),
    (dict(pdamp=float("nan"), ensemble="npt"), "pdamp must be"),
    (dict(pressure=float("nan"), ensemble="npt"), "pressure must be a finite number"),
    (dict(min_distance=-1.0), "min_distance must be a finite number ≥ 0"),
    (dict(max_temperature=-10.0), "max_temperature must be"),
    (dict(ensemble="nph"), "ensemble must be one of nve, langevin, nvt, npt"),
])
def test_bad_settings_are_named(settings, message):
    full = dict(steps=10, dt=0.5, temperature=300.0) | settings
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_md_settings(**full)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):  # run_md checks too
        run_md(copper(), EMT(), progress=False, **full)
