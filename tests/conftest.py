"""Shared fixtures: the acac data shipped in examples/acac (a copy of BOTNet's, MIT)."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ACAC = ROOT / "examples" / "acac"


@pytest.fixture(scope="session")
def acac_dir() -> Path:
    return ACAC


@pytest.fixture(scope="session")
def acac_frames():
    from mlpot.data.records import read_frames

    return read_frames(ACAC / "train_300K.xyz")


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)  # small tensors: more threads only add overhead
    yield
