"""Optimisation, train/eval steps and the training loop."""
