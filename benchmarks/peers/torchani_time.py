#!/usr/bin/env python
"""TorchANI's ANI-2x architecture, timed under peer_common's protocol (speed only).

    .peers/torchani/bin/python benchmarks/peers/torchani_time.py --_time_model ani2x \
        --_time_atoms STRUCTURE.xyz --threads 1 --timing_calls 50

ANI-2x's trained weights are downloaded at first use, which these machines cannot do, so the
model is assembled exactly as ``torchani.models.ANI2x`` does (ANI-2x AEVs, atomic networks,
cosine cutoff, one network instead of the 8-member ensemble) and keeps its random weights:
the cost per call does not depend on them, its accuracy is meaningless. Its own ASE
calculator (``model.ase()``), float32, TorchANI's default neighbour list (all pairs).
"""
from __future__ import annotations

import os

import peer_common as pc


def make_calculator(_: str):
    from torchani.arch import Assembler
    from torchani.models import SYMBOLS_2X

    assembler = Assembler(periodic_table_index=True)
    assembler.set_symbols(SYMBOLS_2X)
    assembler.set_global_cutoff_fn("cosine")
    assembler.set_aev_computer(radial="ani2x", angular="ani2x", strategy="pyaev")
    assembler.set_atomic_networks(ctor="ani2x")
    assembler.set_neighborlist("all_pairs")
    assembler.set_gsaes_as_self_energies("wb97x-631gd")
    model = assembler.assemble(1)
    return model.ase()


if __name__ == "__main__":
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    args = pc.make_parser(__doc__).parse_args()
    pc.timing_child(args, make_calculator)
