#!/usr/bin/env bash
# Create the TorchANI peer venv at <repo>/.peers/torchani (idempotent).
# torch==2.13.0 is installed FIRST so pip uses the CPU wheel and never pulls a CUDA build;
# it is pinned again on the torchani command line so the resolver cannot swap it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.peers/torchani"
TORCHANI_VERSION="${TORCHANI_VERSION:-2.9.0}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("torchani") == sys.argv[1] else 1)' "$TORCHANI_VERSION" 2>/dev/null; then
    "$PY" -m pip install --quiet "torchani==$TORCHANI_VERSION" "torch==2.13.0"
fi
"$PY" -c 'import torch, torchani, ase, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda, "| torchani", m.version("torchani"), "| ase", ase.__version__)'
echo "TorchANI venv ready: $VENV"
