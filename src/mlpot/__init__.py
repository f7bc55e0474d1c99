"""mlpot: machine-learned interatomic potentials, from reference data to molecular dynamics.

    import mlpot
    potential = mlpot.load("runs/acac/model")      # a Potential (or an Ensemble), torch modules
    atoms.calc = mlpot.Calculator("runs/acac/model")  # an ASE calculator
"""

from mlpot.threads import wait_passively

wait_passively()  # before anything imports torch: OpenMP reads it once (see mlpot.threads)

__version__ = "0.1.0"


def load(path):
    """Load a saved potential or ensemble (see :mod:`mlpot.serialize`,
    :mod:`mlpot.uncertainty.ensemble`); never executes code from the files."""
    from mlpot.uncertainty.ensemble import load_model

    return load_model(path)


def __getattr__(name):
    if name == "Calculator":
        from mlpot.dynamics.calculator import MlpotCalculator

        return MlpotCalculator
    if name == "Potential":
        from mlpot.potential import Potential

        return Potential
    raise AttributeError(f"module 'mlpot' has no attribute {name!r}")


__all__ = ["load", "Calculator", "Potential", "__version__"]
