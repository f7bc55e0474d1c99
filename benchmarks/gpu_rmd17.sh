#!/usr/bin/env bash
# rMD17 aspirin and ethanol (split 01: 950 train / 50 validation from train_01, scored on
# test_01) with the equivariant model on a lent GPU machine, both trainings at once on the
# one GPU, after the GPU tests. Run through the `device` tool from the repo root:
#
#   mkdir -p .gpu_data && cp ../shared/data/rmd17/rmd17_{aspirin,ethanol}_{train,test}_01.npz .gpu_data/
#   cp benchmarks/gpu_rmd17.sh .gpu_data/          # .gpu_data and .whl are git-ignored (info/exclude)
#   pip download (cp312, manylinux) ase vesin pydantic pydantic_core annotated-types
#       typing-inspection into .whl/ (the device image has torch and e3nn, not these)
#   device run: bash .gpu_data/gpu_rmd17.sh MINUTES SIZE   (carry .whl and .gpu_data)
#
# usage: bash .gpu_data/gpu_rmd17.sh MINUTES SIZE
set -uo pipefail
MIN=${1:-6}; SIZE=${2:-medium}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__, torch.cuda.get_device_name())" | tee -a $OUT/gpu.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/train/test_training.py -k "gpu or cuda" 2>&1 | tail -5 | tee $OUT/gpu_tests.txt
for mol in aspirin ethanol; do
cat > /tmp/$mol.yaml <<YAML
data: {train: $PWD/.gpu_data/rmd17_${mol}_train_01.npz, valid_fraction: 0.05,
       test: [$PWD/.gpu_data/rmd17_${mol}_test_01.npz]}
model: {kind: equivariant, size: $SIZE}
training: {max_minutes: $MIN, device: cuda, batch_size: 5, threads: 4, patience: 100000}
seed: 0
out: /tmp/run_$mol
YAML
python3 -m mlpot train /tmp/$mol.yaml > $OUT/train_$mol.log 2>&1 &
done
wait
for mol in aspirin ethanol; do
  mkdir -p $OUT/$mol; cp /tmp/run_$mol/metrics.json /tmp/run_$mol/log.csv $OUT/$mol/ 2>/dev/null
done
tail -c 1500 $OUT/train_aspirin.log | tr '\r' '\n' | tail -8
cat $OUT/aspirin/metrics.json $OUT/ethanol/metrics.json 2>/dev/null | head -60
