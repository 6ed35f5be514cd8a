"""Causal grouped-query attention with rotary embeddings and segment masks for packed sequences.

Legend: B batch, T query time, S key time, D model width, H query heads, G key/value heads,
R = H/G query heads per key/value head, K head width.

Two tokens may attend only when they belong to the same segment (document) of a packed row and the
key does not come after the query. Segment 0 marks padding; padding attends only to padding, so no
row of the softmax is empty and no NaN appears (its outputs are masked out of the loss).
With ``model.kernels`` resolved to ``triton`` the attention itself is ``kernels.ops.attention`` (Triton
flash attention with segment ids) instead of ``dot_product_attention``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import AttentionConfig
from open_r1_jax.kernels import ops
from open_r1_jax.model.kv_cache import query_slots, write_slots
from open_r1_jax.model.layers import param, rotary

MASK_VALUE = -1e30  # finite, so a fully-masked row cannot produce NaN; torch_ref uses the same value


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[B,T] segment ids -> [B,1,1,T,S] boolean: same segment and key not after query."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None, None]


def segment_ids_from_mask(mask: jax.Array) -> jax.Array:
    """[B,1,1,T,S] mask -> [B,T] segment ids for the flash kernel: the first key each query sees (the
    start of its segment). Two tokens get the same id exactly when ``attention_mask`` put them in one
    segment, so the kernel applies the same mask; under jit the mask fuses into this reduction."""
    return jnp.argmax(mask[:, 0, 0], axis=-1).astype(jnp.int32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B,T,H,K], k/v [B,S,G,K], mask [B,1,1,T,S] -> [B,T,H,K]. Scores and softmax in fp32."""
    return heads_last(_attend(*heads_first(q, k, v), mask[:, 0, 0]))


def heads_first(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B,T,H,K], k/v [B,S,G,K] -> q [B,G,R,T,K] scaled by K^-1/2, k/v [B,G,S,K]: the layout of the
    batched matmuls, made once per call (q scaled here: [B,T,H,K] multiplies instead of [B,H,T,S])."""
    b, t, h, kd = q.shape
    g = k.shape[2]
    q = (q * jnp.asarray(kd**-0.5, q.dtype)).reshape(b, t, g, h // g, kd).transpose(0, 2, 3, 1, 4)
    return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def heads_last(out: jax.Array) -> jax.Array:
    """[B,G,R,T,K] -> [B,T,H,K] (query head h = g R + r, as ``heads_first`` grouped them)."""
    b, g, r, t, kd = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, g * r, kd)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B,G,R,T,K] (scaled), k/v [B,G,S,K], mask [B,T,S] -> [B,G,R,T,K].

    Written for XLA:CPU, where the [B,H,T,S] elementwise passes, not the matmuls, bound the step. The
    R query heads of a key/value head are folded into the query axis, so both matmuls are plain
    batched matmuls over (B, G) with no copy of k or v per query head (the 5-D grouped einsum cost
    layout copies; repeating k/v cost R times their memory in the backward's residuals). The softmax
    is normalised after the value matmul ([B,H,T] divisions instead of [B,H,T,S]); the
    exponentials are those of ``jax.nn.softmax`` (max subtracted)."""
    b, g, r, t, kd = q.shape
    q = q.reshape(b, g, r * t, kd)  # query index q = r T + t
    mask = jnp.broadcast_to(mask[:, None], (b, r, t, mask.shape[-1])).reshape(b, 1, r * t, -1)
    scores = jnp.einsum("bgqk,bgsk->bgqs", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores, MASK_VALUE)
    p = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    out = jnp.einsum("bgqs,bgsk->bgqk", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.sum(p, axis=-1, keepdims=True)).astype(v.dtype).reshape(b, g, r, t, kd)


CAUSAL_BLOCK = 128  # query rows per block of the causal self-attention below


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Self-attention (T == S) under a causal mask: each block of CAUSAL_BLOCK queries attends only to
    the keys up to its last position, so the upper triangle of blocks is never computed (about half of
    the scores at long T; measured 2.2x faster forward+backward at T=512 on CPU). The skipped scores
    are masked anyway, so the result is that of ``dot_product_attention``. The blocks slice one
    heads-first copy of q, k, v and their outputs are put back in [B,T,H,K] once."""
    t = q.shape[1]
    c = CAUSAL_BLOCK
    if t != k.shape[1] or t < 2 * c or t % c:
        return dot_product_attention(q, k, v, mask)
    q, k, v = heads_first(q, k, v)
    m = mask[:, 0, 0]
    outs = [
        _attend(q[..., i : i + c, :], k[:, :, : i + c], v[:, :, : i + c], m[:, i : i + c, : i + c])
        for i in range(0, t, c)
    ]
    return heads_last(jnp.concatenate(outs, axis=3))


def online_softmax_init(shape: tuple[int, ...], kd: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The empty state of an online softmax over rows ``shape``: running max and sum [...], weighted
    values [...,K] (fp32)."""
    stats = jnp.full(shape, -jnp.inf, jnp.float32)
    return stats, jnp.zeros_like(stats), jnp.zeros((*shape, kd), jnp.float32)


def online_softmax_step(carry: tuple, scores: jax.Array, weighted_values) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One more block of keys into an online softmax (as flash attention): carry from
    ``online_softmax_init``, scores [...,C] fp32, weighted_values(p [...,C]) -> [...,K] the block's
    values weighted by p. The result is (max m, sum of exp(score - m), sum of exp(score - m) * value)."""
    m, total, acc = carry
    m_new = jnp.maximum(m, scores.max(axis=-1))
    p = jnp.exp(scores - m_new[..., None])
    scale = jnp.exp(m - m_new)
    return m_new, total * scale + p.sum(axis=-1), acc * scale[..., None] + weighted_values(p)


def cached_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, q_slot: jax.Array, block: int
) -> jax.Array:
    """q [B,T,H,K], k/v [B,G,S,K] (the cache, new tokens written), valid [B,S], q_slot [B,T] ->
    [B,T,H,K]. ``block`` 0 (or a cache of at most one block) attends over the whole cache at once.

    The cache keeps the slots inside each head ([B,G,S,K]): the layout both products read, so no
    step copies the cache into another layout (measured: a quarter of a 16-row decode step on CPU).
    A decoding cache is preallocated for the longest sequence it may hold, so attending over all of
    it makes a short sequence in a large cache pay for the capacity. This walks the cache
    in blocks of C slots with an online softmax (as flash-decoding does) and stops after the last block
    any query of the batch can see: the loop's trip count is computed on the device, so one compilation
    serves every fill level. The result equals the softmax over the whole cache (masked slots weigh
    exp(MASK_VALUE - max) = 0) up to summation order.
    """
    b, t, h, kd = q.shape
    g, s = k.shape[1], k.shape[2]
    qg = q.reshape(b, t, g, h // g, kd)

    def scores_of(kb, vis):  # kb [B,G,C,K], vis [B,T,C] -> [B,G,R,T,C] fp32
        scores = jnp.einsum("btgrk,bgsk->bgrts", qg, kb, preferred_element_type=jnp.float32) * kd**-0.5
        return jnp.where(vis[:, None, None], scores, MASK_VALUE)

    if not block or s <= block:
        vis = (jnp.arange(s) <= q_slot[:, :, None]) & valid[:, None, :]  # [B,T,S]
        probs = jax.nn.softmax(scores_of(k, vis), axis=-1).astype(v.dtype)
        out = jnp.einsum("bgrts,bgsk->bgrtk", probs, v)  # batch axes first: XLA:CPU's fast matmul path
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, kd)
    n_blocks = jnp.max(q_slot) // block + 1  # blocks up to the last slot any query sees

    def one_block(i, carry):
        start = jnp.minimum(i * block, s - block)  # the last block may overlap the one before it...
        slots = start + jnp.arange(block)
        kb, vb = (jax.lax.dynamic_slice_in_dim(x, start, block, axis=2) for x in (k, v))
        vis = jax.lax.dynamic_slice_in_dim(valid, start, block, axis=1)[:, None, :]  # [B,1,C]
        vis &= (slots >= i * block) & (slots <= q_slot[:, :, None])  # ...whose slots are not counted twice
        pv = lambda p: jnp.einsum("bgrts,bgsk->bgrtk", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
        return online_softmax_step(carry, scores_of(kb, vis), pv)

    _, total, acc = jax.lax.fori_loop(0, n_blocks, one_block, online_softmax_init((b, g, h // g, t), kd))
    out = (acc / total[..., None]).astype(v.dtype)  # [B,G,R,T,K]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, kd)


class Attention(nnx.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        cfg: AttentionConfig,
        std: float,
        dtype,
        rngs: nnx.Rngs,
        kernels: str = "xla",
        causal: bool = True,
    ):
        self.kernels = kernels  # resolved model.kernels: "triton" or "xla"
        self.causal = causal  # False: the mask alone decides (the adapters' bidirectional encoders)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.theta, self.dtype = cfg.rope_theta, dtype
        self.rope_scaling, self.rope_factor = cfg.rope_scaling, cfg.rope_factor  # long context (layers.rotary)
        self.decode_block = cfg.decode_block  # cache slots per block of cached attention (0 = all at once)
        self.wq = param(rngs, (d_model, n_heads * head_dim), ("embed", "heads"), std)
        self.wk = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wv = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wo = param(rngs, (n_heads * head_dim, d_model), ("heads", "embed"), std)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B,T,D], positions [B,T], mask [B,1,1,T,T] -> [B,T,D]."""
        q, k, v = self._qkv(x, positions)
        if not self.causal:  # the flash kernel and the block skipping of causal_attention assume causality
            out = dot_product_attention(q, k, v, mask)
        elif self.kernels == "triton":
            out = ops.attention(q, k, v, segment_ids_from_mask(mask), impl="triton")
        else:
            out = causal_attention(q, k, v, mask)
        return out.reshape(*x.shape[:2], -1) @ self.wo[...].astype(self.dtype)

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B,T,D] -> rotated q [B,T,H,K], rotated k and v [B,T,G,K]. One matmul against the three
        projections side by side and one rotary over q and k together (the weights stay three
        parameters): fewer, larger operations, which is what a CPU step is short of."""
        b, t, _ = x.shape
        h, g = self.n_heads, self.n_kv_heads
        w = jnp.concatenate([self.wq[...], self.wk[...], self.wv[...]], axis=1).astype(self.dtype)
        qk, v = jnp.split((x @ w).reshape(b, t, h + 2 * g, self.head_dim), [h + g], axis=2)
        q, k = jnp.split(self._rope(qk, positions), [h], axis=2)  # splits: concatenates in the backward
        return q, k, v

    def _rope(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        return rotary(x, positions, self.theta, self.rope_scaling, self.rope_factor)

    def init_cache(self, batch: int, length: int) -> dict:
        """Preallocated KV cache of ``length`` slots: k/v [B,G,S,K] in the compute dtype (the layout
        ``cached_attention`` reads)."""
        shape = (batch, self.n_kv_heads, length, self.head_dim)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict, index: jax.Array, valid: jax.Array
    ) -> tuple[jax.Array, dict]:
        """Cached attention of T new tokens written to slots [index, index+T) of the cache.

        x [B,T,D], positions [B,T], cache {"k","v": [B,G,S,K]}, index int scalar or [B] (each row's
        slot, ``model/kv_cache.py``), valid [B,S] (slots that hold real tokens, the new ones included)
        -> (out [B,T,D], updated cache). A query sees the valid slots up to its own: the same keys as
        ``__call__`` on the whole sequence, so cached decoding and recomputation agree (up to summation
        order); only the cache's blocks up to the last query's slot are read (``decode_block``).
        """
        b, t, _ = x.shape
        q, k, v = self._qkv(x, positions)
        cache = {"k": write_slots(cache["k"], k, index, axis=2), "v": write_slots(cache["v"], v, index, axis=2)}
        q_slot = query_slots(index, b, t)
        out = cached_attention(q, cache["k"], cache["v"], valid, q_slot, self.decode_block)
        return out.reshape(b, t, -1) @ self.wo[...].astype(self.dtype), cache
