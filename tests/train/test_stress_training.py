"""Training with stress on periodic cells: a bpnn fitted to ASE EMT energies, forces and
stresses of rattled, strained, sheared Cu–Al cells (small cells, many images) reproduces
EMT's stress on held-out cells, and its stress is the strain derivative of its energy."""

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_stress
from ase.io import write
from helpers import emt_cells


@pytest.mark.slow
def test_stress_trained_model_reproduces_emt_stress(tmp_path):
    from mlpot.config import config_from_dict
    from mlpot.dynamics.calculator import MlpotCalculator
    from mlpot.train.run import run_training

    write(tmp_path / "train.xyz", emt_cells(60, 1))
    test = emt_cells(15, 2)
    errors = {}
    for epochs in (1, 150):
        config = config_from_dict({
            "data": {"train": str(tmp_path / "train.xyz"), "valid_fraction": 0.15},
            "model": {"kind": "bpnn", "size": "small", "cutoff": 4.5},
            "training": {"max_epochs": epochs, "max_minutes": None, "threads": 1,
                         "sigma_stress": 0.002, "learning_rate": 3e-3},
            "out": str(tmp_path / f"run{epochs}")})
        run_training(config, progress=False)
        calculator = MlpotCalculator(str(tmp_path / f"run{epochs}" / "model"))
        predicted, reference = [], []
        for atoms in test:
            copy = atoms.copy()
            copy.calc = calculator
            predicted.append(copy.get_stress())
            reference.append(atoms.get_stress())
        errors[epochs] = np.sqrt(np.mean((np.array(predicted) - np.array(reference)) ** 2))
    spread = np.sqrt(np.mean(np.array(reference) ** 2))
    assert errors[150] < 0.25 * spread, (errors, spread)
    assert errors[150] < 0.5 * errors[1], errors
    # the trained model's stress is its energy's strain derivative (finite differences)
    atoms = test[0].copy()
    atoms.calc = calculator
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5),
                               atol=1e-6)
