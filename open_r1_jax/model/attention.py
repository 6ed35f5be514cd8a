"""Causal grouped-query attention with rotary embeddings and segment masks for packed sequences.

Legend: B batch, T query time, S key time, D model width, H query heads, G key/value heads,
R = H/G query heads per key/value head, K head width.

Two tokens may attend only when they belong to the same segment (document) of a packed row and the
key does not come after the query. Segment 0 marks padding; padding attends only to padding, so no
row of the softmax is empty and no NaN appears (its outputs are masked out of the loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import AttentionConfig
from open_r1_jax.model.layers import param, rotary

MASK_VALUE = -1e30  # finite, so a fully-masked row cannot produce NaN; torch_ref uses the same value


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[B,T] segment ids -> [B,1,1,T,S] boolean: same segment and key not after query."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B,T,H,K], k/v [B,S,G,K], mask [B,1,1,T,S] -> [B,T,H,K]. Scores and softmax in fp32."""
    b, t, h, kd = q.shape
    g = k.shape[2]
    q = q.reshape(b, t, g, h // g, kd)
    scores = jnp.einsum("btgrk,bsgk->bgrts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores * (kd**-0.5), MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs, v)
    return out.reshape(b, t, h, kd)


class Attention(nnx.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 cfg: AttentionConfig, std: float, dtype, rngs: nnx.Rngs):
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.theta, self.dtype = cfg.rope_theta, dtype
        self.wq = param(rngs, (d_model, n_heads * head_dim), ("embed", "heads"), std)
        self.wk = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wv = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wo = param(rngs, (n_heads * head_dim, d_model), ("heads", "embed"), std)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B,T,D], positions [B,T], mask [B,1,1,T,T] -> [B,T,D]."""
        b, t, _ = x.shape
        c = lambda p: p[...].astype(self.dtype)
        q = (x @ c(self.wq)).reshape(b, t, self.n_heads, self.head_dim)
        k = (x @ c(self.wk)).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = (x @ c(self.wv)).reshape(b, t, self.n_kv_heads, self.head_dim)
        q, k = rotary(q, positions, self.theta), rotary(k, positions, self.theta)
        out = dot_product_attention(q, k, v, mask)
        return out.reshape(b, t, -1) @ c(self.wo)
