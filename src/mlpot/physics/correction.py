"""Standard DFT-D3(BJ) or DFT-D4 dispersion on top of a model of dispersion-free DFT labels.

A model trained on labels computed without dispersion, with ``model.dispersion_correction:
d3`` (or ``d4``) and ``model.xc_functional: pbe`` (the functional of the labels), records the
correction in its metadata. The ASE calculator (and so ``mlpot md``) adds the correction's
energy, forces and stress, computed by the maintained reference libraries simple-dftd3 and
dftd4 through their own ASE calculators. Training and ``mlpot eval`` see the model alone,
which is what the dispersion-free labels describe.
"""

from __future__ import annotations

KINDS = ("d3", "d4")


def correction_description(kind: str, functional: str) -> dict:
    """What a model's metadata records (``metadata["dispersion_correction"]``); raises
    ValueError for an unknown kind or a functional the library has no parameters for."""
    description = {"kind": kind, "functional": functional,
                   "damping": "d3bj" if kind == "d3" else "rational"}
    correction_calculator(description)  # fail now, not after training
    return description


def correction_calculator(description: dict):
    """The ASE calculator of a recorded correction (energy eV, forces eV/Å, stress eV/Å³)."""
    kind, functional = description["kind"], description["functional"]
    if kind not in KINDS:
        raise ValueError(f"unknown dispersion correction {kind!r} (expected one of {KINDS})")
    try:
        if kind == "d3":
            from dftd3.ase import DFTD3

            calculator = DFTD3(method=functional, damping=description.get("damping", "d3bj"))
        else:
            from dftd4.ase import DFTD4

            calculator = DFTD4(method=functional)
    except ImportError as error:
        raise ValueError(f"dispersion correction {kind}: {error.name} is not installed "
                         "(pip install 'mlpot[dispersion]')") from error
    try:
        calculator._create_damping_param()  # the functional's parameters exist
    except Exception as error:  # the libraries' own InputError
        raise ValueError(f"dispersion correction {kind}: no parameters for functional "
                         f"{functional!r} ({error})") from error
    return calculator
