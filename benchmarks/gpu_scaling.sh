#!/usr/bin/env bash
# Issue 7's benchmarks on a lent GPU machine: the GPU tests, then time and memory per MD step
# against system size (benchmarks/scaling.py with the model on CUDA), float32 and float64.
# Run through the `device` tool from the repo root, with the wheels of gpu_rmd17.sh in .whl
# (the device image has torch, not ase/vesin/pydantic):
#
#   device run: bash benchmarks/gpu_scaling.sh          (carry .whl)
#
# Writes $OUT/gpu.txt, $OUT/gpu_tests.txt, $OUT/scaling_cuda_{float32,float64}.json and
# $OUT/scaling_cuda.png. About 5 minutes on an H100.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/dynamics/test_calculator_md.py \
    tests/train/test_training.py -k "gpu or cuda" 2>&1 | tail -5 | tee $OUT/gpu_tests.txt
for dtype in float32 float64; do
    timeout 240 python3 benchmarks/scaling.py --device cuda --dtype $dtype --threads 4 \
        --angular-cutoff 3.5 --sides 2 3 5 8 12 17 23 32 --out $OUT/scaling_cuda_$dtype.json
done
python3 benchmarks/scaling.py --plot $OUT/scaling_cuda.png $OUT/scaling_cuda_*.json
