"""Models: per-atom energies from a batch. They know nothing of losses, files or ASE."""

from mlpot.models.bpnn import BehlerParrinello
from mlpot.models.equivariant import Equivariant
from mlpot.models.linear import LinearModel
from mlpot.models.painn import PaiNN
from mlpot.models.schnet import SchNet

MODEL_KINDS = {"bpnn": BehlerParrinello, "equivariant": Equivariant, "linear": LinearModel,
               "painn": PaiNN, "schnet": SchNet}


def build_model(kind: str, **kwargs):
    """The model class named ``kind`` built from its ``config()`` dict."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**kwargs)


__all__ = ["BehlerParrinello", "Equivariant", "LinearModel", "MODEL_KINDS", "PaiNN", "SchNet", "build_model"]
