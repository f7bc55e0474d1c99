#!/usr/bin/env bash
# Create the MACE peer venv at <repo>/.peers/mace (idempotent).
# torch==2.13.0 is installed FIRST so pip uses the CPU wheel and never pulls a CUDA build.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.peers/mace"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("mace-torch") == "0.3.16" else 1)' 2>/dev/null; then
    # keep torch pinned so the resolver cannot swap it
    "$PY" -m pip install --quiet "mace-torch==0.3.16" "torch==2.13.0"
fi
"$PY" -c 'import torch, mace, ase, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda, "| mace-torch", m.version("mace-torch"), "| ase", ase.__version__)'
echo "MACE venv ready: $VENV"
