"""Uncertainty: deep ensembles (ensemble.py) and calibration metrics (calibration.py)."""
