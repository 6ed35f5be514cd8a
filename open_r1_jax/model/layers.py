"""Building blocks: parameters with logical axis names, RMSNorm, rotary embeddings, SwiGLU.

Legend: B batch, T time, D model width, H query heads, G key/value heads, K head width,
F hidden width of a feed-forward network, V vocabulary.

Parameters carry *logical* axis names in their ``axes`` metadata (``embed``, ``mlp``, ``heads``,
``experts``, ``vocab``); ``open_r1_jax.parallel`` maps them to mesh axes. No device code here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class RouterBias(nnx.Variable):
    """Non-trainable per-expert bias of the DeepSeek-V3 router (updated from loads, not gradients)."""


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float) -> nnx.Param:
    """A normal(0, std) fp32 parameter annotated with logical axis names."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), axes=axes)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in fp32 and cast back to x's dtype."""

    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), axes=("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float, scaling: str = "none", factor: float = 1.0) -> jax.Array:
    """Rotary embedding, "rotate half" convention (Llama / HF). x [B,T,*,K], positions [B,T].

    Long-context scaling (``model.attention.rope_scaling``) by ``factor``: ``linear`` divides the
    positions (position interpolation, Chen et al. 2023); ``ntk`` raises the base to
    theta * factor^(K/(K-2)) ("NTK-aware" scaling): high frequencies keep their resolution, the lowest
    is stretched by ``factor``. ``none`` is the plain rotary of the training length.
    """
    k = x.shape[-1]
    if scaling == "ntk":
        theta = theta * factor ** (k / max(k - 2, 1))
    inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))  # [K/2]
    pos = positions.astype(jnp.float32)
    if scaling == "linear":
        pos = pos / factor
    angles = pos[..., None] * inv_freq  # [B,T,K/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B,T,1,K]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def gated_hidden(x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
    """silu(x @ gate) * (x @ up); x [..., D], w_gate/w_up [D,F] -> [..., F].

    gate and up are one matmul against [D,2F] (the weights stay two parameters): on CPU one wider
    matmul and its backward beat two narrow ones (benchmarks/profile_step.py). The product is split
    with one ``jnp.split``, whose gradient is one concatenate; two slices' was pad + pad + add (7% of
    the baby-GPT step's operation time)."""
    gate, up = jnp.split(x @ jnp.concatenate([w_gate, w_up], axis=-1), [w_gate.shape[-1]], axis=-1)
    return jax.nn.silu(gate) * up


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """down(silu(x @ gate) * (x @ up)); x [..., D], w_gate/w_up [D,F], w_down [F,D]."""
    return gated_hidden(x, w_gate, w_up) @ w_down


class SwiGLU(nnx.Module):
    """A dense SwiGLU feed-forward network (used for the shared experts)."""

    def __init__(self, d_model: int, ffn_dim: int, std: float, dtype, rngs: nnx.Rngs):
        self.w_gate = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), std)
        self.w_up = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), std)
        self.w_down = param(rngs, (ffn_dim, d_model), ("mlp", "embed"), std)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda p: p[...].astype(self.dtype)
        return swiglu(x, c(self.w_gate), c(self.w_up), c(self.w_down))
