"""Training: the energy–force loss, the trainer loop, closed-form ridge fits and metrics."""
