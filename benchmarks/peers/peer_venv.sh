#!/usr/bin/env bash
# Create (idempotently) the peer venv <repo>/.peers/NAME with torch 2.13.0 (CPU) and PACKAGE==VERSION.
#   bash benchmarks/peers/peer_venv.sh NAME PACKAGE VERSION
# torch==2.13.0 is installed FIRST so pip uses the CPU wheel and never pulls a CUDA build; it is
# pinned again on the package's command line so the resolver cannot swap it.
set -euo pipefail
NAME="$1" PACKAGE="$2" VERSION="$3"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.peers/$NAME"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)' "$PACKAGE" "$VERSION" 2>/dev/null; then
    "$PY" -m pip install --quiet "$PACKAGE==$VERSION" "torch==2.13.0"
fi
"$PY" -c 'import sys, torch, ase, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", sys.argv[1], m.version(sys.argv[1]), "| ase", ase.__version__)' "$PACKAGE"
echo "$NAME venv ready: $VENV"
