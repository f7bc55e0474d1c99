"""`mlpot md` as a user runs it: the ensembles, what the log and the printed summary hold, the
watchdogs' exit codes (3 geometry, 4 uncertainty, 5 runaway), and one-line errors for bad
settings. Real subprocesses for the cases the issue names, ``mlpot.cli.main`` in this process
for the rest (the same code, without a second torch start-up each). The model is a linear fit
to EMT copper (tests/helpers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.cluster import Icosahedron
from ase.io import read, write

from helpers import copper_linear_potential

from mlpot.cli import main
from mlpot.serialize import save

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mlpot_md(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlpot", "md", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def copper(tmp_path_factory):
    """(model folder, fcc cell file, 13-atom cluster file)."""
    folder = tmp_path_factory.mktemp("copper")
    potential, cell = copper_linear_potential()
    save(potential, folder / "model")
    write(folder / "cell.xyz", cell)
    write(folder / "cluster.xyz", Icosahedron("Cu", 2))
    return folder / "model", folder / "cell.xyz", folder / "cluster.xyz"


def one_line_error(run) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def in_process(*args, capsys) -> tuple[int, str, str]:
    """``mlpot md ARGS`` through ``mlpot.cli.main``: (exit code, stdout, stderr)."""
    code = main(["md", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("ensemble", ["nve", "nvt", "npt"])
def test_ensembles_through_the_cli(copper, ensemble, tmp_path, capsys):
    """Each ensemble runs; the log has the conserved energy for NVT and NPT, and pressure,
    volume and cell lengths for NPT; the drift line is the total energy's only for NVE.
    NPT runs as a real subprocess."""
    model, cell, _ = copper
    out = tmp_path / "md.traj"
    args = (model, cell, "--ensemble", ensemble, "--steps", 60, "--dt", 2.0, "--interval", 10,
            "--pressure", 5.0, "--pdamp", 100, "--out", out)
    if ensemble == "npt":
        run = mlpot_md(*args)
        code, stdout, stderr = run.returncode, run.stdout, run.stderr
    else:
        code, stdout, stderr = in_process(*args, capsys=capsys)
    assert code == 0, stderr
    frames = read(out, index=":")
    assert len(frames) == 7
    header, *rows = (tmp_path / "md.log").read_text().splitlines()
    header = header.split()
    assert header[:5] == ["Time[ps]", "Etot[eV]", "Epot[eV]", "Ekin[eV]", "T[K]"]
    assert len(rows) == 7
    summary = json.loads((tmp_path / "md.json").read_text())
    # the drift of the total energy only where it is conserved; a thermostat's conserved
    # quantity (energy exchanged with the bath included) for NVT and NPT
    if ensemble == "nve":
        assert "total-energy drift" in stdout and "conserved-energy" not in stdout
        assert summary["energy_drift_eV_per_atom_per_ps"] is not None
        assert len(header) == 5
    else:
        assert "total-energy drift" not in stdout and "conserved-energy drift" in stdout
        assert summary["energy_drift_eV_per_atom_per_ps"] is None
        assert header[5] == "Econs[eV]"
    if ensemble == "npt":
        assert header[6:] == ["P[GPa]", "V[Å^3]", "a[Å]", "b[Å]", "c[Å]"]
        volumes = np.array([float(row.split()[7]) for row in rows])
        np.testing.assert_allclose(volumes, [f.get_volume() for f in frames], rtol=1e-5)
        assert volumes[-1] < volumes[0] - 1.0  # 5 GPa squeezes the cell, Å³
        assert "mean P" in stdout and "GPa" in stdout
    else:
        assert "P[GPa]" not in header
        assert all(np.allclose(f.cell, frames[0].cell) for f in frames)


def test_bad_settings_are_one_line_errors(copper, tmp_path):
    model, cell, _ = copper
    out = tmp_path / "md.traj"
    negative = one_line_error(mlpot_md(model, cell, "--temperature", -300, "--out", out))
    assert "temperature must be a finite number ≥ 0 K, not -300.0" in negative
    assert "steps must be an integer > 0, not 0" in one_line_error(
        mlpot_md(model, cell, "--steps", 0, "--out", out))
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--dt", "0"], "md: dt must be a finite number > 0 fs"),
    (["--dt", "nan"], "md: dt must be a finite number > 0 fs, not nan"),
    (["--steps", "-10"], "md: steps must be an integer > 0, not -10"),
    (["--interval", "0"], "md: interval must be an integer > 0"),
    (["--friction", "-0.1", "--ensemble", "langevin"], "md: friction must be a finite number > 0"),
    (["--tdamp", "inf", "--ensemble", "nvt"], "md: tdamp must be a finite number > 0 fs"),
    (["--pdamp", "-5", "--ensemble", "npt"], "md: pdamp must be a finite number > 0 fs"),
    (["--pressure", "nan", "--ensemble", "npt"], "md: pressure must be a finite number (GPa)"),
    (["--temperature", "0", "--ensemble", "nvt"], "md: temperature must be a finite number > 0 K"),
    (["--max-temperature", "-1"], "md: max_temperature must be a finite number > 0 K"),
    (["--max-energy-drift", "nan"], "md: max_energy_drift must be a finite number > 0 eV/atom"),
    (["--min-distance", "-0.5"], "md: min_distance must be a finite number ≥ 0 Å"),
    (["--fragment-distance", "-1"], "md: fragment_distance must be a finite number > 0 Å"),
    (["--ensemble", "npt", "--structure-is-a-cluster"], "npt needs a cell periodic in all three "
                                                        "directions (the structure has pbc"),
])
def test_each_setting_is_checked(copper, flags, message, tmp_path, capsys):
    model, cell, cluster = copper
    out = tmp_path / "md.traj"
    if "--structure-is-a-cluster" in flags:
        flags, cell = flags[:-1], cluster
    code, _, stderr = in_process(model, cell, "--out", out, *flags, capsys=capsys)
    assert code == 2
    error = stderr.strip()
    assert error.startswith("error: ") and "\n" not in error and message in error, error
    assert not out.exists()


def test_a_million_kelvin_is_stopped_early(copper, tmp_path):
    """The cluster at 10⁶ K comes apart: stopped (exit 3) by the fragment check at the
    model's cutoff (4.5 Å) long before the run's end, the last frame showing it."""
    model, _, cluster = copper
    out = tmp_path / "hot.traj"
    run = mlpot_md(model, cluster, "--temperature", 1e6, "--steps", 1000, "--out", out)
    assert run.returncode == 3, run.stderr
    assert "came apart" in run.stderr and "farther than 4.5 Å" in run.stderr
    summary = json.loads((tmp_path / "hot.json").read_text())
    assert summary["stopped"]["kind"] == "geometry" and summary["stopped"]["step"] < 200
    last = read(out, index=-1)
    assert summary["frames_written"] == len(read(out, index=":"))
    assert np.ptp(last.positions, axis=0).max() < 30.0  # Å: stopped while still close
    assert f"step {summary['stopped']['step']} of 1000" in run.stderr


def test_the_energy_watchdog_exits_5(copper, tmp_path, capsys):
    """NVE with a 10 fs step on copper: the total energy moves by ~4 meV/atom, past a bound
    of 2 meV/atom: exit 5 (runaway), that step's frame the trajectory's last. At 5 fs it
    moves ~1 meV/atom and the run ends normally."""
    model, cell, _ = copper
    out = tmp_path / "md.traj"
    args = (model, cell, "--temperature", 1000, "--steps", 200, "--interval", 20, "--out", out,
            "--max-energy-drift", 0.002)
    code, _, stderr = in_process(*args, "--dt", 10, capsys=capsys)
    assert code == 5, stderr
    assert "total energy moved" in stderr and "> 0.002 eV/atom" in stderr
    summary = json.loads((tmp_path / "md.json").read_text())
    assert summary["stopped"]["kind"] == "runaway"
    last = read(out, index=-1)
    assert abs(last.get_total_energy() - summary["total_energies_eV"][0]) / len(last) > 0.002
    assert summary["stopped"]["step"] % 20 != 0  # checked every step, written when it stops
    assert in_process(*args, "--dt", 5, capsys=capsys)[0] == 0


def test_a_run_stopped_at_step_zero_says_so_and_keeps_the_frame(copper, tmp_path):
    model, _, _ = copper
    start = tmp_path / "close.xyz"
    write(start, Atoms("Cu3", positions=[[0, 0, 0], [0.4, 0, 0], [2.6, 0, 0]]))
    out = tmp_path / "md.traj"
    run = mlpot_md(model, start, "--steps", 100, "--out", out)
    assert run.returncode == 3, run.stderr
    assert "error: MD stopped at step 0, the starting structure: atoms 0 (Cu) and 1 (Cu) " \
           "are 0.400 Å apart" in run.stderr
    assert "the trajectory holds that one frame" in run.stderr
    frames = read(out, index=":")
    assert len(frames) == 1
    np.testing.assert_allclose(frames[0].positions, read(start).positions, atol=1e-12)
