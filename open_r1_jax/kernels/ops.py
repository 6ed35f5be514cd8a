"""The ops the model calls, each with its pure-jnp oracle. ``impl`` is a resolved kernel choice.

Legend: R rows sorted by expert, E experts, K/N matmul widths, D model width, F expert hidden width,
B batch, T time, H query heads, G key/value heads, K head width (attention).

- ``impl="triton"``: the Triton kernel (``kernels/*.py``, imported here lazily: they import triton),
  through ``kernels.adapter`` (jax-triton on CUDA, the interpreter under TRITON_INTERPRET=1).
- ``impl="xla"``: plain JAX (``jax.lax.ragged_dot`` for the grouped ops).
The ``*_reference`` oracles are deliberately naive (dense over experts, materialised masks): the
tests and ``benchmarks/gpu_kernels.py`` compare every kernel, forward and gradients, against them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # as open_r1_jax.model.attention (finite: a fully masked row cannot produce NaN)


def _check(impl: str) -> None:
    if impl not in ("triton", "xla"):
        raise ValueError(
            f"impl must be a resolved kernel choice 'triton' or 'xla' (got {impl!r}); "
            "resolve model.kernels with kernels.resolve first"
        )


# ----------------------------------------------------------------------------- grouped matmul


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, impl: str = "xla") -> jax.Array:
    """x [R,K] rows sorted by expert, w [E,K,N], group_sizes [E] -> [R,N]; rows after the groups are 0."""
    _check(impl)
    if impl == "triton":
        from open_r1_jax.kernels.grouped_matmul import grouped_matmul as kernel

        return kernel(x, w, group_sizes)
    return jax.lax.ragged_dot(x, w.astype(x.dtype), group_sizes)


def _group_masks(group_sizes: jax.Array, rows: int) -> jax.Array:
    """[E] sizes -> [E,R] float: 1 where row r belongs to group e."""
    ends = jnp.cumsum(group_sizes)
    r = jnp.arange(rows)
    return ((r[None, :] >= (ends - group_sizes)[:, None]) & (r[None, :] < ends[:, None])).astype(jnp.float32)


def grouped_matmul_reference(x, w, group_sizes):
    """Oracle: every expert on every row, masked: sum_e [r in e] x[r] @ w[e]."""
    masks = _group_masks(group_sizes, x.shape[0]).astype(x.dtype)
    return jnp.einsum("erk,ekn->rn", masks[:, :, None] * x[None], w.astype(x.dtype))


# ----------------------------------------------------------------------------- grouped SwiGLU experts


def grouped_swiglu(x, group_sizes, w_gate, w_up, w_down, row_scale=None, impl: str = "xla"):
    """x [R,D] rows sorted by expert, group_sizes [E], w_gate/w_up [E,D,F], w_down [E,F,D],
    row_scale [R] (routing weights, applied after the down projection; None = 1) -> [R,D]."""
    _check(impl)
    if impl == "triton":
        from open_r1_jax.kernels.fused_ffn import grouped_swiglu as kernel

        return kernel(x, group_sizes, w_gate, w_up, w_down, row_scale)
    c = lambda w: w.astype(x.dtype)
    g = jax.lax.ragged_dot(x, c(w_gate), group_sizes)
    u = jax.lax.ragged_dot(x, c(w_up), group_sizes)
    y = jax.lax.ragged_dot(jax.nn.silu(g) * u, c(w_down), group_sizes)
    return y if row_scale is None else y * row_scale[:, None].astype(y.dtype)


def grouped_swiglu_reference(x, group_sizes, w_gate, w_up, w_down, row_scale=None):
    """Oracle: every expert's SwiGLU on every row, masked and summed, times the row scale."""
    masks = _group_masks(group_sizes, x.shape[0]).astype(x.dtype)  # [E,R]
    c = lambda w: w.astype(x.dtype)
    g = jnp.einsum("rd,edf->erf", x, c(w_gate))
    u = jnp.einsum("rd,edf->erf", x, c(w_up))
    y = jnp.einsum("erf,efd,er->rd", jax.nn.silu(g) * u, c(w_down), masks)
    return y if row_scale is None else y * row_scale[:, None].astype(y.dtype)


# ----------------------------------------------------------------------------- attention


def attention(q, k, v, segment_ids, impl: str = "xla"):
    """Causal attention within segments: q [B,T,H,K], k/v [B,T,G,K], segment_ids [B,T] -> [B,T,H,K]."""
    _check(impl)
    if impl == "triton":
        from open_r1_jax.kernels.flash_attention import flash_attention as kernel

        return kernel(q, k, v, segment_ids)
    return attention_reference(q, k, v, segment_ids)


def attention_reference(q, k, v, segment_ids):
    """Oracle (the model's XLA attention in its textbook form): fp32 scores, [B,1,1,T,S] mask, softmax,
    probs @ v. The model normalises after the value matmul instead: equal to fp32 rounding."""
    b, t, h, kd = q.shape
    g = k.shape[2]
    keep = jnp.tril(jnp.ones((t, t), bool))[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
    qg = q.reshape(b, t, g, h // g, kd)
    scores = jnp.einsum("btgrk,bsgk->bgrts", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(keep[:, None, None], scores * (kd**-0.5), MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bgrts,bsgk->btgrk", probs, v).reshape(b, t, h, kd)
