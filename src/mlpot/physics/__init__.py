"""Physical long-range terms that add to the local model's energy (see mlpot.potential)."""
