"""The optimiser of the seed: global-norm clipping, then AdamW with linear warmup + cosine decay.

- ``optax.warmup_cosine_decay_schedule``: lr 0 at step 0, linear to ``lr`` over ``warmup_steps``,
  cosine to ``min_lr`` at ``steps`` (the cosine's length includes the warmup, as in optax).
- Weight decay mask (documented choice): decay every parameter with two or more dimensions
  (projections, experts, routers, embeddings, LM head); never norms' scales. The DeepSeek-V3 router
  bias is not a parameter at all (non-trainable state), so neither gradients nor decay touch it.
- Clipping acts on the accumulated gradient of the whole global batch (it runs inside the step).
  It is optax's ``clip_by_global_norm`` formula (the same state, the same arithmetic) with the norm
  summed leaf by leaf in plain jnp: ``optax.tree.norm`` mixes host and device operands when the
  update runs in host memory (``train.offload``, training/offload.py), which then fails to trace.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from open_r1_jax.config import TrainConfig


def schedule(cfg: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps, decay_steps=cfg.steps, end_value=cfg.min_lr
    )


def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm: g * max_norm / ||g|| when ||g|| exceeds max_norm (host-safe norm)."""

    def update(updates, state, params=None):
        return clip_to(updates, global_norm(updates), max_norm), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_to(updates, norm: jax.Array, max_norm: float):
    """The clipping of ``clip_by_global_norm`` with the norm given (a group of leaves of a tree whose
    norm was taken whole: train.offload_dir)."""
    trigger = norm < max_norm
    return jax.tree.map(lambda t: jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm), updates)


def set_to_zero() -> optax.GradientTransformation:
    """optax.set_to_zero for frozen parameters, as ``u * 0``: host-safe (``jnp.zeros_like`` would be
    created in device memory), and equal, since their gradients are zeros already (step.mask_frozen)."""
    return optax.GradientTransformation(
        optax.init_empty_state, lambda updates, state, params=None: (jax.tree.map(lambda u: u * 0, updates), state)
    )


def optimizer_parts(cfg: TrainConfig) -> tuple[optax.GradientTransformation | None, optax.GradientTransformation]:
    """-> (the clipping, or None without ``clip_norm``; AdamW with its schedule): the chain's two
    parts. The clipping needs the whole gradient; AdamW is elementwise, so it can also run a group of
    parameters at a time (``train.offload_dir``, training/disk_offload.py)."""
    clip = clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else None
    adamw = optax.adamw(
        schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    return clip, adamw


ADAPTERS = ("vision", "audio")  # top-level parameter keys of the media adapters (model/multimodal.py)


def scale_adapters(factor: float) -> optax.GradientTransformation:
    """Multiply the updates of the adapters' parameters by ``factor``: after AdamW, a learning rate
    (and decay) ``factor`` times the schedule's for them. A from-scratch adapter's gradients are
    noisy and weak next to the decoder's; the decoder then fits each question's prior first."""
    return optax.masked(optax.scale(factor), lambda params: {k: k in ADAPTERS for k in params})


def make_optimizer(cfg: TrainConfig, trainable: Callable | None = None) -> optax.GradientTransformation:
    """``trainable``: params -> tree of bools (a stage's mask); frozen parameters get no update, no
    decay and no optimizer moments, and are left out of the clipping norm."""
    parts = [part for part in optimizer_parts(cfg) if part is not None]
    if cfg.adapter_lr_scale != 1.0:
        parts.append(scale_adapters(cfg.adapter_lr_scale))
    tx = optax.chain(*parts)
    if trainable is None:
        return tx

    def labels(params):
        mask = trainable(params)  # None: everything trains
        return jax.tree.map(lambda t: "train" if mask is None or t else "frozen", params if mask is None else mask)

    return optax.multi_transform({"train": tx, "frozen": set_to_zero()}, labels)
