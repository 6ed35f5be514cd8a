"""Shared helpers of the benchmark scripts: one real batch, the compiled train step and the torch_ref
step on it (timed steps), timing of jitted functions and the closing JSON line."""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import DataConfig, to_dict
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset
from open_r1_jax.data.sources import load_documents
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.model import build_model, split_model
from open_r1_jax.parallel.mesh import batch_sharding, replicated
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.state import create_train_state
from open_r1_jax.training.step import init_state, make_train_step


def one_batch(cfg) -> dict[str, np.ndarray]:
    """One packed training batch of the embedded corpus (byte tokens) for ``cfg.train``'s shape."""
    docs, _, _ = load_documents(DataConfig(max_corpus_mb=2, heldout_percent=0))
    tok = ByteTokenizer()
    src = ChunkSource([tok.encode(d.text) for d in docs], cfg.train.seq_len, tok.eos_id)
    spec = PipelineSpec(cfg.train.seq_len, cfg.train.global_batch, 0, 8, train=True)
    return {**next(iter(make_dataset(src, spec))), **random_media(cfg.model, cfg.train.global_batch)}


def random_media(cfg, batch: int) -> dict[str, np.ndarray]:
    """Noise images / clips for the enabled adapters, on alternate rows (image rows first). Both
    encoders run on every row whatever its media, so the step costs what a demo step costs."""
    rng, rows = np.random.default_rng(0), np.arange(batch)
    out = {}
    if cfg.vision.enabled:
        r, c = cfg.vision.image_size, cfg.vision.channels
        out["image"] = rng.integers(0, 256, (batch, r, r, c), dtype=np.uint8)
        out["has_image"] = rows % 2 == 0 if cfg.audio.enabled else np.ones(batch, bool)
    if cfg.audio.enabled:
        out["audio"] = rng.standard_normal((batch, cfg.audio.max_samples)).astype(np.float32) * 0.1
        out["has_audio"] = rows % 2 == 1 if cfg.vision.enabled else np.ones(batch, bool)
    return out


def jax_step(cfg, batch, mesh=None):
    """-> (the lowered pretraining train step of ``cfg``, its initial state, the batch on device).
    With ``mesh``, the state is placed as the Trainer places it and the batch split over the mesh."""
    tx = make_optimizer(cfg.train)
    if mesh is None:
        graphdef, params, model_state = split_model(build_model(cfg.model, 0))
        state = init_state(params, model_state, tx, cfg)
        jb = {k: jnp.asarray(v) for k, v in batch.items()}
        fn = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg), donate_argnums=0)
        return fn.lower(state, jb), state, jb
    with jax.set_mesh(mesh):
        graphdef, state, sh = create_train_state(cfg, tx, mesh)
        jb = {k: jax.device_put(jnp.asarray(v), batch_sharding(mesh)) for k, v in batch.items()}
        step = make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg)
        fn = jax.jit(step, donate_argnums=0, out_shardings=(sh, replicated(mesh)))
        return fn.lower(state, jb), state, jb


class JaxStep:
    """The compiled JAX train step of ``cfg`` on ``batch``, fed the same batch again and again."""

    def __init__(self, cfg, batch, warmup: int = 2, mesh=None):
        lowered, self.state, self.batch = jax_step(cfg, batch, mesh)
        self.step = lowered.compile()
        # XLA's count of the whole step's arithmetic, read before partitioning (a compiled program on
        # a mesh counts one device's share)
        cost = lowered.cost_analysis()
        self.flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
        self.run(warmup)

    def run(self, n: int) -> float:
        """Seconds per step over ``n`` steps, waiting for the last."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.state, m = self.step(self.state, self.batch)
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / max(n, 1)


class TorchRefStep:
    """The ``torch_ref`` train step of the same architecture, weights and batch (eager, or
    ``torch.compile``), with its own optimizer and schedule (``torch_ref.train``)."""

    def __init__(self, cfg, batch, compile_model: bool, warmup: int = 2):
        import torch
        from flax import nnx

        import torch_ref
        from open_r1_jax.name_map import to_torch_state
        from torch_ref.train import make_optimizer as torch_optimizer

        torch.set_num_threads(os.cpu_count() or 1)
        model = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg.model)))
        state = nnx.to_pure_dict(nnx.state(build_model(cfg.model, 0)))
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_torch_state(state).items()})
        self.model = torch.compile(model) if compile_model else model
        if compile_model:  # the optimiser and the bias update act on the original module
            self.model.update_router_bias = model.update_router_bias
        self.opt = torch_optimizer(model, to_dict(cfg.train))
        self.train = to_dict(cfg.train)
        as_torch = lambda k, v: torch.from_numpy(v) if k == "segment_ids" else torch.from_numpy(v).long()
        self.batch = {k: as_torch(k, v) for k, v in batch.items()}
        self.i = 1  # the schedule's step
        self.run(warmup)  # warm-up (and compilation)

    def run(self, n: int) -> float:
        from torch_ref.train import train_step

        t0 = time.perf_counter()
        for _ in range(n):
            train_step(self.model, self.opt, self.batch, self.i, self.train)
            self.i += 1
        return (time.perf_counter() - t0) / max(n, 1)


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
