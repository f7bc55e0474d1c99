"""Active learning: explore with the model, select where it is unsure, label, retrain."""
