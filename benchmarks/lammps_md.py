#!/usr/bin/env python
"""NVE MD with an mlpot model driven by LAMMPS (mlpot.dynamics.lammps, fix external) against
the same model under ASE's velocity Verlet: time per step, energy drift, and how long the two
trajectories agree.

    OMP_NUM_THREADS=1 python benchmarks/lammps_md.py MODEL [--steps 1000] [--dt 0.5]
        [--out benchmarks/results/lammps/lammps_md.json]

Systems: acac (15 atoms, first frame of examples/acac/test_MD_300K.xyz, LAMMPS boundary
s s s) and 27 rotated acac molecules 12 Å apart in a periodic 36 Å cube (405 atoms,
benchmarks/inference_side_by_side.acac_box). Velocities: 300 K, the same in both engines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.io.lammpsdata import write_lammps_data
from ase.md.verlet import VelocityVerlet

import mlpot
from common import ACAC, RESULTS, write_json
from inference_side_by_side import acac_box
from mlpot.dynamics.lammps import couple, open_lammps
from mlpot.dynamics.md import thermalize

SPECIES = ["H", "C", "O"]


def lammps_run(atoms, model: str, steps: int, dt: float, folder: Path) -> dict:
    """``steps`` of LAMMPS' fix nve; total energies each 10 steps, positions at 100 steps."""
    periodic = atoms.pbc.all()
    data = folder / "start.data"
    write_lammps_data(data, atoms, specorder=SPECIES, masses=True, velocities=True,
                      units="metal", write_image_flags=True)
    lmp = open_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nboundary "
                        f"{'p p p' if periodic else 's s s'}\nread_data {data}\n"
                        f"timestep {dt / 1000}\nfix nve all nve\nthermo 10\n"
                        "thermo_style custom step pe ke etotal")
    couple(lmp, mlpot.Calculator(model), SPECIES)
    lmp.command("run 0")
    energies = [lmp.get_thermo("etotal")]
    start = time.perf_counter()
    done, at_100 = 0, None
    while done < steps:
        lmp.command("run 10 pre no post no")
        done += 10
        energies.append(lmp.get_thermo("etotal"))
        if done == 100:
            n = lmp.extract_setting("nlocal")
            ids = lmp.numpy.extract_atom("id")[:n]
            at_100 = np.array(lmp.numpy.extract_atom("x")[:n])[np.argsort(ids)]
    seconds = time.perf_counter() - start
    lmp.close()
    return {"ms_per_step": 1000 * seconds / steps, "total_energies": energies,
            "positions_100": at_100}


def ase_run(atoms, model: str, steps: int, dt: float) -> dict:
    atoms = atoms.copy()
    atoms.calc = mlpot.Calculator(model)
    dynamics = VelocityVerlet(atoms, timestep=dt * units.fs)
    energies = [atoms.get_total_energy()]
    start = time.perf_counter()
    at_100 = None
    for done in range(10, steps + 1, 10):
        dynamics.run(10)
        energies.append(atoms.get_total_energy())
        if done == 100:
            at_100 = atoms.positions.copy()
    seconds = time.perf_counter() - start
    return {"ms_per_step": 1000 * seconds / steps, "total_energies": energies,
            "positions_100": at_100}


def drift(energies: list[float], n_atoms: int, dt: float) -> float:
    """Slope of the total energy, meV/atom/ps (energies every 10 steps)."""
    times = np.arange(len(energies)) * 10 * dt / 1000
    return float(np.polyfit(times, np.asarray(energies) / n_atoms, 1)[0] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dt", type=float, default=0.5, help="fs")
    parser.add_argument("--out", default=str(RESULTS / "lammps" / "lammps_md.json"))
    args = parser.parse_args()
    molecule = read(ACAC / "test_MD_300K.xyz", 0)
    molecule.center(vacuum=10.0)  # a box for LAMMPS' data file; not periodic
    # 12 Å apart: no two molecules within the 5 Å cutoff (the model knows no contacts)
    systems = {"acac (15 atoms)": molecule,
               "27 acac, periodic (405 atoms)": acac_box(spacing=12.0)}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, atoms in systems.items():
            atoms.calc = None
            thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
            in_lammps = lammps_run(atoms, args.model, args.steps, args.dt, Path(folder))
            in_ase = ase_run(atoms, args.model, args.steps, args.dt)
            apart = in_lammps["positions_100"] - in_ase["positions_100"]
            if atoms.pbc.all():  # LAMMPS wraps atoms into the box
                cell = atoms.cell.array
                apart -= np.rint(apart @ np.linalg.inv(cell)) @ cell
            results[name] = {
                "n_atoms": len(atoms), "steps": args.steps, "dt_fs": args.dt,
                "lammps_ms_per_step": round(in_lammps["ms_per_step"], 2),
                "ase_ms_per_step": round(in_ase["ms_per_step"], 2),
                "lammps_drift_meV_atom_ps": round(drift(in_lammps["total_energies"],
                                                        len(atoms), args.dt), 4),
                "ase_drift_meV_atom_ps": round(drift(in_ase["total_energies"], len(atoms),
                                                     args.dt), 4),
                "max_position_difference_after_100_steps_A": float(np.abs(apart).max()),
            }
            print(name, json.dumps(results[name]), flush=True)
    write_json(args.out, {"model": args.model, "results": results})


if __name__ == "__main__":
    main()
