"""torchrun with 2 CPU processes (gloo, DDP) takes the same steps as 1 process on the same
global batches: equal validation losses epoch by epoch, equal final weights; only rank 0
writes."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers import acac_head


def _train(tmp_path, acac_dir, name, processes, model, on_disk=False):
    """20 training frames in global batches of 4: every process gets 2 structures a step
    (unequal shards would weigh observations slightly differently from one process); with
    ``on_disk`` read from mlpot's HDF5 file (streamed, no descriptor cache)."""
    from mlpot.data.ondisk import convert

    train = tmp_path / "train.xyz"
    if not train.exists():
        acac_head(acac_dir / "train_300K.xyz", train, 25)
    if on_disk:
        if not (tmp_path / "train.h5").exists():
            convert([train], tmp_path / "train.h5")
        train = tmp_path / "train.h5"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(train), "valid_fraction": 0.2,
                 "isolated_atoms": str(acac_dir / "isolated_atoms.xyz")},
        "model": model,
        "training": {"max_epochs": 3, "max_minutes": None, "batch_size": 4,
                     "dtype": "float64", "threads": 1},
        "out": str(tmp_path / name)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "mlpot", "train", str(config)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "mlpot", "train", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / name / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    return rows, load_file(str(tmp_path / name / "model" / "model.safetensors"))


@pytest.mark.parametrize("model, on_disk", [({"kind": "bpnn", "size": "small"}, False),
                                            ({"kind": "schnet", "size": "small"}, False),
                                            ({"kind": "bpnn", "size": "small"}, True)],
                         ids=["bpnn-descriptor-cache", "schnet", "bpnn-on-disk"])
def test_two_processes_equal_one(tmp_path, acac_dir, model, on_disk):
    single, single_weights = _train(tmp_path, acac_dir, "single", 1, model, on_disk)
    double, double_weights = _train(tmp_path, acac_dir, "double", 2, model, on_disk)
    assert len(single) == len(double) == 3
    for a, b in zip(single, double):
        assert float(b["valid_loss"]) == pytest.approx(float(a["valid_loss"]), rel=1e-8)
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-8)
    for key, value in single_weights.items():
        torch.testing.assert_close(double_weights[key], value, rtol=1e-8, atol=1e-10)
    # and the run really changed the weights (the comparison is not of two untouched models)
    assert float(single[-1]["valid_loss"]) < float(single[0]["valid_loss"])
