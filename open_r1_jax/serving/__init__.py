"""Serving: ``engine.py`` (continuous batching over sequence slots), ``api.py`` (the OpenAI-compatible
FastAPI app), ``schema.py`` (request bodies), ``metrics.py`` (Prometheus); the command is
``python -m open_r1_jax.serve``."""
