"""The micro configuration shared by tests (imported as ``from micro import MICRO``; a module of its
own because several conftest.py files exist in the suite)."""

from __future__ import annotations

import os

from launch.local import with_device_count
from open_r1_jax.config import load_config

MICRO = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.drn_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.head_dim=16",
    "model.max_seq_len=64",
    "model.drn.n_experts=2",
    "model.drn.expert_ffn_dim=32",
    "model.moe.n_experts=4",
    "model.moe.top_k=2",
    "model.moe.expert_ffn_dim=32",
    "train.seq_len=32",
    "train.global_batch=4",
    "train.steps=8",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_batches=2",
    "data.max_corpus_mb=0.3",
    "run.progress=false",
    "run.tensorboard=false",
    "run.peak_tflops=0.1",
]


def micro_config(*overrides: str, run_dir=None):
    extra = [f"run.dir={run_dir}"] if run_dir is not None else []
    return load_config(None, MICRO + extra + list(overrides))


def subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a subprocess a test starts: this one's (the suite's XLA flags and shared
    compilation cache, see the root conftest.py) on the CPU, with ``devices`` fake host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), devices)
    return env
