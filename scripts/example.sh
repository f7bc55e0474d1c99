#!/usr/bin/env bash
# Set up, then train a Behler–Parrinello potential on the shipped acac example, evaluate it
# and run a short MD with it. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-runs/acac}
mlpot train examples/acac.yaml --out "$OUT"
mlpot eval "$OUT/model" examples/acac/test_MD_600K.xyz
# a short NVE run; mlpot md exits with code 3 if atoms collapse or the molecule comes apart,
# 5 if it runs away (temperature, energy drift): the model left its data
status=0
mlpot md "$OUT/model" examples/acac/test_MD_300K.xyz --steps 400 --dt 0.5 --temperature 300 \
  --ensemble nve --out "$OUT/md.traj" || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || [ "$status" -eq 5 ]
echo
echo "model:       $OUT/model   (load with mlpot.load or mlpot.Calculator)"
echo "metrics:     $OUT/metrics.json   per-epoch log: $OUT/log.csv"
echo "plots:       $OUT/parity.png  $OUT/learning_curve.png"
echo "trajectory:  $OUT/md.traj   energy log: $OUT/md.log"
