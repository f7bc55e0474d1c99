#!/usr/bin/env bash
# Create the NequIP peer venv at <repo>/.peers/nequip (idempotent).
# torch==2.13.0 is installed FIRST so pip uses the CPU wheel and never pulls a CUDA build;
# it is pinned again on the nequip command line so the resolver cannot swap it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.peers/nequip"
NEQUIP_VERSION="${NEQUIP_VERSION:-0.19.1}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("nequip") == sys.argv[1] else 1)' "$NEQUIP_VERSION" 2>/dev/null; then
    "$PY" -m pip install --quiet "nequip==$NEQUIP_VERSION" "torch==2.13.0"
fi
"$PY" -c 'import torch, nequip, ase, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda, "| nequip", m.version("nequip"), "| e3nn", m.version("e3nn"), "| lightning", m.version("lightning"), "| ase", ase.__version__)'
echo "NequIP venv ready: $VENV"
