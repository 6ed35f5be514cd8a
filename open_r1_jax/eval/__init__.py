"""Evaluation: multiple-choice data built from held-out text (``mc_data``)."""
