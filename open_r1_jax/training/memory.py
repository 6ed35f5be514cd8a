"""What the train step keeps in device memory, read from the model's own autodiff (``plan.py``).

The planner used to count activations with a per-token formula. Checked against the compiled step
(``memory_analysis().temp_size_in_bytes``, benchmarks/train_step.py) it was 2.2x low without
checkpointing and 4.5x low with it (``small_cpu.yaml``, 16 layers): the formula missed tensors
the model really keeps (masks, gathered and sorted dispatch buffers, casts, the stacked weights of
a checkpointed scan) and the step's own buffers. Nothing is re-derived here instead:

- **Residuals**: the tensors the backward pass reads, which the forward pass must keep. They are the
  outputs of ``jax.vjp``'s jaxpr that are not its inputs, traced abstractly (``jax.make_jaxpr`` on
  shape-only arguments: no memory, seconds even for the 13B plans) through the stage's own loss on
  one device's micro-batch, with the configured checkpoint policy.
- **Many blocks**: blocks of one kind have one set of shapes, and each block added to a run of
  same-kind blocks adds the same residual bytes (checked exactly, with and without checkpointing, in
  tests/test_plan.py). A model with runs longer than two blocks is traced with each run cut to one
  block, then with one run at two blocks at a time, and the rest extrapolated: the 24-block plan of
  ``configs/a100x4_offload.yaml`` (2 DRN + 22 MoE) traces three models of 2-3 blocks per checkpoint
  setting instead of the whole one (the CLI: 22 s -> 13 s, the same output).
- **Recomputed blocks**: with activation checkpointing the backward pass recomputes one block at a
  time and holds that block's residuals meanwhile. Each run of same-kind blocks is a scan of its
  own; XLA shares some of those loops' temporaries and not others (its heap packing), so the
  figure lies between the largest run's block and the sum over runs.
- **Gradients**: without checkpointing they fill the space the freed residuals leave (measured: the
  compiled temporaries are within 5% of the residuals alone); with checkpointing the residuals are
  too small to hide them, so the fp32 gradients add in full. With micro-batches (``train.micro_batch``)
  the scan's accumulator adds one more gradient-sized buffer.

Legend: B rows of one device's micro-batch, T sequence length.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from open_r1_jax.config import Config, ModelConfig
from open_r1_jax.model.transformer import block_runs


def saved_bytes(f, params, *data) -> tuple[int, int]:
    """Bytes autodiff keeps between ``f(params, *data)``'s forward and backward passes (arrays or
    ``jax.ShapeDtypeStruct``): the vjp's residuals, less the arguments themselves (they live anyway).

    -> (bytes computed from ``params`` alone, bytes that depend on ``data``). The first kind (casts
    and stacked copies of weights) is split like the weights under FSDP; the second (activations)
    scales with the rows of the micro-batch. A residual depends on the data when the jaxpr's data flow
    reaches it from a ``data`` input (an equation with a data-dependent input taints all its outputs).
    """
    closed, shapes = jax.make_jaxpr(lambda *a: jax.vjp(f, *a), return_shape=True)(params, *data)
    jaxpr = closed.jaxpr
    n_res = len(jax.tree.leaves(shapes[1]))
    n_params = len(jax.tree.leaves(params))
    tainted = set(jaxpr.invars[n_params:])
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    residuals = {v for v in jaxpr.outvars[len(jaxpr.outvars) - n_res :] if not isinstance(v, Literal)}
    residuals -= set(jaxpr.invars)
    size = lambda vs: sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize for v in vs)
    return size(residuals - tainted), size(residuals & tainted)


@functools.lru_cache(maxsize=16)  # ModelConfig is frozen, so hashable; plans ask several times
def abstract_model(m: ModelConfig):
    """-> (the model built abstractly: shapes only, no memory; its (graphdef, params, model_state))."""
    from flax import nnx

    from open_r1_jax.model import build_model, split_model

    model = nnx.eval_shape(lambda: build_model(m))
    return model, split_model(model)


def _batch(rows: int, seq: int) -> dict:
    """An abstract packed micro-batch [B,T] with the step's extras."""
    tokens = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return {
        **{k: tokens for k in ("inputs", "targets", "positions", "segment_ids")},
        "denominator": scalar,
        "n_micro": scalar,
    }


def _memoised(fn):
    """``fn(cfg, rows)`` memoised on what it reads: the model config, the sequence length, the rows
    (plans ask again: the CLI's report and the teacher's, the tests)."""
    cache: dict[tuple, object] = {}

    @functools.wraps(fn)
    def wrapper(cfg: Config, rows: int):
        key = (cfg.model, cfg.train.seq_len, rows)
        if key not in cache:
            cache[key] = fn(cfg, rows)
        return cache[key]

    return wrapper


def with_run_lengths(cfg: Config, lengths: list[int]) -> Config:
    """``cfg`` with the model's block runs (``block_runs``) resized to ``lengths``: the same kinds in
    the same order (the DRN blocks stay at the bottom, LSH layers renumbered)."""
    kinds = [kind for (kind, _), n in zip(block_runs(cfg.model), lengths) for _ in range(n)]
    m = cfg.model
    attention = m.attention
    if attention.kind != "lsh":
        attention = dataclasses.replace(attention, lsh_layers=tuple(i for i, (_, lsh) in enumerate(kinds) if lsh))
    drn = sum(k == "drn" for k, _ in kinds)
    m = dataclasses.replace(m, n_layers=len(kinds), drn_layers=drn, attention=attention)
    return dataclasses.replace(cfg, model=m)


@_memoised
def step_residuals(cfg: Config, rows: int) -> tuple[int, int]:
    """Residuals of a micro-batch of ``rows`` rows through the language-modelling loss, as
    ``saved_bytes`` splits them (the router biases count as data: they are not sharded like weights).
    Runs longer than two blocks are extrapolated from short ones (the module docstring)."""
    runs = [n for _, n in block_runs(cfg.model)]
    if max(runs) <= 2:
        return traced_step_residuals(cfg, rows)
    ones = [1] * len(runs)
    base = traced_step_residuals(with_run_lengths(cfg, ones), rows)
    total = list(base)
    for i, n in enumerate(runs):
        if n > 1:  # each further block of run i adds what its second block adds
            grown = traced_step_residuals(with_run_lengths(cfg, ones[:i] + [2] + ones[i + 1 :]), rows)
            total = [t + (g - b) * (n - 1) for t, g, b in zip(total, grown, base)]
    return total[0], total[1]


def traced_step_residuals(cfg: Config, rows: int) -> tuple[int, int]:
    """``step_residuals`` traced through the whole model."""
    from open_r1_jax.training.stages import Pretrain

    _, (graphdef, params, model_state) = abstract_model(cfg.model)
    stage = Pretrain(cfg).bind(graphdef)
    loss = lambda p, b, s: stage.loss_fn(p, s, b, jax.random.key(0))[0]
    return saved_bytes(loss, params, _batch(rows, cfg.train.seq_len), model_state)


@_memoised
def block_residuals(cfg: Config, rows: int) -> dict[tuple[str, bool], tuple[int, int]]:
    """-> {(block kind, LSH?): ``saved_bytes`` of one such block run without checkpointing}."""
    from flax import nnx

    from open_r1_jax.model.attention import attention_mask

    model, _ = abstract_model(cfg.model)
    seq, d = cfg.train.seq_len, cfg.model.d_model
    x = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    h = jax.ShapeDtypeStruct((rows, seq, d), model.dtype)
    out = {}
    for block in model.blocks:
        if (block.kind, block.lsh) in out:  # blocks of one kind have the same shapes: trace once
            continue
        graphdef, state = nnx.split(block)

        def run(state, h, segment_ids, graphdef=graphdef, lsh=block.lsh):
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), segment_ids.shape)
            mask = None if lsh else attention_mask(segment_ids)
            key = jax.random.key(0) if lsh else None
            y, _ = nnx.merge(graphdef, state)(h, positions, mask, segment_ids > 0, segment_ids, key)
            return y

        out[(block.kind, block.lsh)] = saved_bytes(run, state, h, x)
    return out


def recomputed_block_residuals(cfg: Config, rows: int) -> tuple[float, float]:
    """What the backward pass of checkpointed blocks holds while it recomputes them, per device
    rows: each run of same-kind blocks is one scan (``Transformer._scan_blocks``) whose backward
    body recomputes one block and holds that block's residuals. -> (the largest run's block: XLA
    shares the runs' loop temporaries; the sum over runs: it shares none), each as ``saved_bytes``'s
    (weight-derived, data-dependent) pair summed. XLA:CPU measured between the two (a DRN run of 90 MB
    and a MoE run of 65 MB added 131 MB), so ``plan.py`` takes the midpoint and fits on the sum."""
    per_kind = block_residuals(cfg, rows)
    runs = [kind for kind, _ in block_runs(cfg.model)]
    return max((per_kind[k] for k in runs), key=sum), tuple(sum(per_kind[k][j] for k in runs) for j in (0, 1))
