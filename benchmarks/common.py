"""Shared helpers of the benchmark scripts: one real batch, the compiled train step, timing of jitted
functions and the closing JSON line."""

from __future__ import annotations

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import DataConfig
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset
from open_r1_jax.data.sources import load_documents
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.model import build_model, split_model
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.step import init_state, make_train_step


def one_batch(cfg) -> dict[str, np.ndarray]:
    """One packed training batch of the embedded corpus (byte tokens) for ``cfg.train``'s shape."""
    docs, _, _ = load_documents(DataConfig(max_corpus_mb=2, heldout_percent=0))
    tok = ByteTokenizer()
    src = ChunkSource([tok.encode(d.text) for d in docs], cfg.train.seq_len, tok.eos_id)
    spec = PipelineSpec(cfg.train.seq_len, cfg.train.global_batch, 0, 8, train=True)
    return next(iter(make_dataset(src, spec)))


def jax_step(cfg, batch):
    """-> (the compiled pretraining train step of ``cfg``, its initial state, the batch on device)."""
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    tx = make_optimizer(cfg.train)
    state = init_state(params, model_state, tx, cfg)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    compiled = (
        jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg), donate_argnums=0).lower(state, jb).compile()
    )
    return compiled, state, jb


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn(*args)`` (already jitted), after ``warmup`` calls (compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def environment() -> dict:
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "device": f"{dev.platform}:{dev.device_kind}",
        "n_devices": jax.device_count(),
        "python": platform.python_version(),
    }


def emit(name: str, figures: dict) -> None:
    """The closing line of every benchmark: one JSON object with its figures."""
    print(json.dumps({"benchmark": name, **environment(), **figures}))
