#!/usr/bin/env bash
# Issue 7's benchmarks on a lent GPU machine, in one call: the GPU tests; time and memory per
# MD step against system size (benchmarks/scaling.py with the model on CUDA) in float32 and
# float64; the same on that machine's CPU (16 threads) for the GPU/CPU ratio in one run; and
# a message-passing ensemble vmapped against members in turn on the GPU
# (benchmarks/ensemble_vmap_cost.py). Run through the `device` tool from the repo root, with
# the wheels the device image lacks in .whl (git-ignored through .git/info/exclude):
#
#   pip download (cp312, manylinux, --no-deps) ase vesin pydantic pydantic_core
#       annotated-types typing-inspection typing_extensions torch-pme into .whl/
#   device run: bash benchmarks/gpu_scaling.sh          (carry .whl, timeout 600)
#
# Writes $OUT/gpu.txt, $OUT/gpu_tests.txt, $OUT/scaling_cuda_{float32,float64}.json,
# $OUT/scaling_cpu16_float32.json, $OUT/ensemble_vmap_cuda.txt and $OUT/log.txt; each step
# has its own time limit (together under 9.5 minutes), so a slow step costs only itself.
# Plot afterwards, here: python benchmarks/scaling.py --plot PNG RESULT.json ...
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
exec > >(tee $OUT/log.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), \
torch.get_num_threads(), 'CPU threads')" | tee -a $OUT/gpu.txt
lscpu | grep -E "^Model name|^CPU\(s\)" | tee -a $OUT/gpu.txt
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/dynamics/test_calculator_md.py \
    tests/train/test_training.py -k "gpu or cuda" 2>&1 | tail -5 | tee $OUT/gpu_tests.txt
echo "== scaling, cuda float32"
timeout 170 python3 benchmarks/scaling.py --device cuda --dtype float32 --threads 4 \
    --angular-cutoff 3.5 --sides 2 3 5 8 12 17 23 32 --out $OUT/scaling_cuda_float32.json
echo "== ensemble vmap, cuda"
(cd benchmarks && timeout 60 python3 ensemble_vmap_cost.py --device cuda --seconds 2 \
    --threads 4) | tee $OUT/ensemble_vmap_cuda.txt
echo "== scaling, cuda float64"
timeout 100 python3 benchmarks/scaling.py --device cuda --dtype float64 --threads 4 \
    --angular-cutoff 3.5 --sides 3 8 17 32 --out $OUT/scaling_cuda_float64.json
echo "== scaling, cpu float32, 16 threads"
timeout 100 python3 benchmarks/scaling.py --device cpu --dtype float32 --threads 16 \
    --angular-cutoff 3.5 --sides 2 5 8 12 17 --out $OUT/scaling_cpu16_float32.json
