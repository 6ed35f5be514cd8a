"""Reformer LSH attention: random-rotation hashing, sort by (bucket, time), chunked attention.

Follows Kitaev, Kaiser & Levskaya, "Reformer: The Efficient Transformer" (ICLR 2020), and its code in
trax (``trax/layers/research/efficient_attention.py``). ``torch_ref/model.py`` mirrors it formula for
formula (rotations passed in), and ``parity_tests/test_lsh_parity.py`` compares the two.

Legend: B batch, T time, Tp time padded to a multiple of C, H query heads, G key/value heads,
R = H/G, K head width, N hash rounds, U buckets, C chunk length, M = Tp/C chunks, W = 2C keys a chunk
sees, S cache slots.

One round n of the training forward:
1. Hash: bucket = argmax([x Rot_n, -x Rot_n]) for every (rotary-embedded) query and key; Rot [K,N,U/2]
   ~ N(0,1) comes from the caller's rng, so the backward pass (and a rematerialised forward) sees
   the same buckets. U = 1 means no hashing (everything in bucket 0).
2. Sort queries by (bucket, time), and keys by (bucket, time) (one sort with shared QK).
3. Cut into chunks of C; chunk m of the sorted queries attends to chunks m-1 and m of the sorted keys
   (chunk 0 has no previous chunk: no wrap-around).
4. Masks use original times: key time <= query time, same segment id (packed rows; 0 = padding).
   With shared QK a query's own key is masked in the window (its dot with itself would dominate).
5. Every query has one more slot, its own key/value at the fixed score SELF_VALUE (a finite penalty,
   as trax's self mask): it takes the weight only when nothing else is visible, so a token attends to
   itself only when nothing else is available, no row is empty, and nothing from the future leaks in.
6. Unsort; the N rounds are combined by their logsumexp: out = sum_n softmax_n(lse_n) * out_n.

Deliberate choices (not in the paper): separate keys (shared_qk false) hash with the same rotations as
the queries and are sorted on their own, so chunk m of queries meets chunks m-1, m of keys; with one
bucket and C >= T this is exactly full causal attention (tests/test_lsh.py). Each round is sorted
on its own (no chunk straddles two rounds). No correction for a key seen in several rounds.
Known property of sorted-chunk attention (as in Reformer): which earlier keys fall in a query's window
depends on the buckets of all tokens of the row, later ones included; the values of later tokens never
reach a query (d out_i / d v_j = 0 for j > i, tested).

Decoding (``LSHAttention.decode``) uses the bucket rule itself instead of chunks: a new query attends,
in each round, to the cached keys of its bucket, plus the same self fallback, and combines rounds by
logsumexp. It reads only the query's bucket lists of the cache's index, or every key of the filled
blocks with the other buckets masked (``model/lsh_decode.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import AttentionConfig
from open_r1_jax.model.attention import MASK_VALUE
from open_r1_jax.model.kv_cache import query_slots, write_slots
from open_r1_jax.model.layers import param, rotary
from open_r1_jax.model.lsh_decode import bucket_rounds, init_index, masked_rounds, write_index

SELF_VALUE = -1e5  # score of a query's fallback slot on itself; torch_ref uses the same value
NORM_EPS = 1e-6  # shared QK: k = q / sqrt(sum(q^2) + eps)
BIG_TIME = 2**30  # time of the empty "previous chunk" of chunk 0: later than every query


def lsh_rotations(rng: jax.Array, head_dim: int, n_hashes: int, n_buckets: int) -> jax.Array:
    """Random rotations [K,N,U/2] ~ N(0,1) (fp32) of one layer from its rng."""
    return jax.random.normal(rng, (head_dim, n_hashes, n_buckets // 2), jnp.float32)


def hash_buckets(x: jax.Array, rotations: jax.Array, n_buckets: int) -> jax.Array:
    """x [...,T,K], rotations [K,N,U/2] -> buckets [...,N,T] int32 in [0, U)."""
    if n_buckets == 1:
        return jnp.zeros((*x.shape[:-2], rotations.shape[1], x.shape[-2]), jnp.int32)
    rotated = jnp.einsum("...tk,knu->...ntu", x.astype(jnp.float32), rotations)
    return jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1).astype(jnp.int32)


def length_normalise(x: jax.Array) -> jax.Array:
    """Shared-QK keys: x / |x| (fp32 math, x's dtype)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + NORM_EPS)).astype(x.dtype)


def _gather(x: jax.Array, order: jax.Array) -> jax.Array:
    """x [B,H,Tp,...] (the same for every round), order [B,H,N,Tp] -> x[order] [B,H,N,Tp,...]."""
    idx = order.reshape(*order.shape, *([1] * (x.ndim - 3)))
    return jnp.take_along_axis(x[:, :, None], idx, axis=3)


def _chunks(x: jax.Array, c: int) -> jax.Array:
    """[B,H,N,Tp,...] -> [B,H,N,M,C,...]."""
    return x.reshape(*x.shape[:3], x.shape[3] // c, c, *x.shape[4:])


def _with_previous(x: jax.Array, fill) -> jax.Array:
    """[B,H,N,M,C,...] -> [B,H,N,M,W,...]: each chunk preceded by the previous one (``fill`` for m=0)."""
    first = jnp.full_like(x[:, :, :, :1], fill)
    prev = jnp.concatenate([first, x[:, :, :, :-1]], axis=3)
    return jnp.concatenate([prev, x], axis=4)


def lsh_attention(
    q: jax.Array,
    k: jax.Array | None,
    v: jax.Array,
    segment_ids: jax.Array,
    rotations: jax.Array,
    n_buckets: int,
    chunk_size: int,
    shared_qk: bool,
) -> jax.Array:
    """q [B,T,H,K], k [B,T,G,K] (None with shared_qk), v [B,T,G,K], segment_ids [B,T],
    rotations [K,N,U/2] -> [B,T,H,K]. Scores, softmax and the round combination in fp32."""
    b, t, h, kd = q.shape
    r = h // v.shape[2]
    c = min(chunk_size, t)
    tp = -(-t // c) * c
    pad = [(0, 0), (0, 0), (0, tp - t), (0, 0)]
    qh = jnp.pad(q.transpose(0, 2, 1, 3), pad)  # [B,H,Tp,K]
    vh = jnp.pad(jnp.repeat(v, r, axis=2).transpose(0, 2, 1, 3), pad)  # [B,H,Tp,K]
    kh = length_normalise(qh) if shared_qk else jnp.pad(jnp.repeat(k, r, axis=2).transpose(0, 2, 1, 3), pad)
    seg = jnp.pad(segment_ids, [(0, 0), (0, tp - t)], constant_values=-1)[:, None, None]  # [B,1,1,Tp]
    time = jnp.arange(tp, dtype=jnp.int32)

    q_buckets = hash_buckets(qh, rotations, n_buckets)  # [B,H,N,Tp]
    q_order = jnp.argsort(q_buckets * tp + time, axis=-1)  # sort by (bucket, time); keys are unique
    if shared_qk:
        k_order = q_order
    else:
        k_order = jnp.argsort(hash_buckets(kh, rotations, n_buckets) * tp + time, axis=-1)

    qc = _chunks(_gather(qh, q_order), c)  # [B,H,N,M,C,K]
    q_time = _chunks(q_order, c)  # [B,H,N,M,C]
    q_seg = _chunks(jnp.take_along_axis(seg, q_order, axis=-1), c)
    v_self = _chunks(_gather(vh, q_order), c)  # [B,H,N,M,C,K]
    kw = _with_previous(_chunks(_gather(kh, k_order), c), 0)  # [B,H,N,M,W,K]
    vw = _with_previous(_chunks(_gather(vh, k_order), c), 0)
    k_time = _with_previous(_chunks(k_order, c), BIG_TIME)  # [B,H,N,M,W]
    k_seg = _with_previous(_chunks(jnp.take_along_axis(seg, k_order, axis=-1), c), -2)

    scores = jnp.einsum("bhnmck,bhnmwk->bhnmcw", qc, kw, preferred_element_type=jnp.float32) * kd**-0.5
    mask = (k_time[..., None, :] <= q_time[..., None]) & (k_seg[..., None, :] == q_seg[..., None])
    if shared_qk:
        mask &= k_time[..., None, :] != q_time[..., None]
    scores = jnp.where(mask, scores, MASK_VALUE)
    scores = jnp.concatenate([scores, jnp.full((*scores.shape[:-1], 1), SELF_VALUE, jnp.float32)], axis=-1)
    lse = jax.nn.logsumexp(scores, axis=-1)  # [B,H,N,M,C]
    probs = jnp.exp(scores - lse[..., None])
    out = jnp.einsum("bhnmcw,bhnmwk->bhnmck", probs[..., :-1].astype(v.dtype), vw, preferred_element_type=jnp.float32)
    out = out + probs[..., -1:] * v_self.astype(jnp.float32)  # [B,H,N,M,C,K]

    undo = jnp.argsort(q_order, axis=-1)  # back to time order
    out = jnp.take_along_axis(out.reshape(b, h, -1, tp, kd), undo[..., None], axis=3)  # [B,H,N,Tp,K]
    lse = jnp.take_along_axis(lse.reshape(b, h, -1, tp), undo, axis=3)  # [B,H,N,Tp]
    weights = jax.nn.softmax(lse, axis=2)  # rounds weighted by their share of the total mass
    out = jnp.sum(out * weights[..., None], axis=2)  # [B,H,Tp,K]
    return out[:, :, :t].transpose(0, 2, 1, 3).astype(q.dtype)


class LSHAttention(nnx.Module):
    """Grouped-query attention with rotary embeddings whose attention is ``lsh_attention``.

    Parameters are those of ``Attention`` (``wq``, ``wk``, ``wv``, ``wo``; no ``wk`` with shared QK),
    so export and the torch names work unchanged.
    """

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
    ):
        self.n_heads, self.n_kv_heads, self.head_dim, self.dtype = n_heads, n_kv_heads, head_dim, dtype
        self.theta, self.rope_scaling, self.rope_factor = cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor
        self.n_hashes, self.n_buckets, self.chunk_size = cfg.n_hashes, cfg.n_buckets, cfg.chunk_size
        self.shared_qk, self.decode_block, self.bucket_index = cfg.shared_qk, cfg.decode_block, cfg.lsh_bucket_index
        self.wq = param(rngs, (d_model, n_heads * head_dim), ("embed", "heads"), std)
        if not cfg.shared_qk:
            self.wk = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wv = param(rngs, (d_model, n_kv_heads * head_dim), ("embed", "kv_heads"), std)
        self.wo = param(rngs, (n_heads * head_dim, d_model), ("heads", "embed"), std)

    def rotations(self, rng: jax.Array) -> jax.Array:
        return lsh_rotations(rng, self.head_dim, self.n_hashes, self.n_buckets)

    def _project(self, x: jax.Array, positions: jax.Array):
        """x [B,T,D] -> q [B,T,H,K], k [B,T,G,K] (None with shared QK), v [B,T,G,K]."""
        b, t, _ = x.shape
        c = lambda p: p[...].astype(self.dtype)
        rope = lambda y: rotary(y, positions, self.theta, self.rope_scaling, self.rope_factor)
        q = rope((x @ c(self.wq)).reshape(b, t, self.n_heads, self.head_dim))
        k = None if self.shared_qk else rope((x @ c(self.wk)).reshape(b, t, self.n_kv_heads, self.head_dim))
        v = (x @ c(self.wv)).reshape(b, t, self.n_kv_heads, self.head_dim)
        return q, k, v

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, rng: jax.Array) -> jax.Array:
        """x [B,T,D], positions/segment_ids [B,T], rng: this layer's key -> [B,T,D]."""
        b, t, _ = x.shape
        q, k, v = self._project(x, positions)
        out = lsh_attention(q, k, v, segment_ids, self.rotations(rng), self.n_buckets, self.chunk_size, self.shared_qk)
        return out.reshape(b, t, -1) @ self.wo[...].astype(self.dtype)

    # ------------------------------------------------------------------------- decoding

    def init_cache(self, batch: int, length: int) -> dict:
        """Preallocated bucketed cache of ``length`` slots: keys [B,S,Gk,K] (Gk = H with shared QK,
        else G), values [B,S,G,K], each key's bucket per round [B,S,Gk,N], and with
        ``lsh_bucket_index`` (and ``decode_block`` > 0) the bucket lists of ``lsh_decode.init_index``."""
        gk = self.n_heads if self.shared_qk else self.n_kv_heads
        cache = {
            "k": jnp.zeros((batch, length, gk, self.head_dim), self.dtype),
            "v": jnp.zeros((batch, length, self.n_kv_heads, self.head_dim), self.dtype),
            "buckets": jnp.zeros((batch, length, gk, self.n_hashes), jnp.int32),
        }
        if self.bucket_index and self.decode_block:
            cache["index"] = init_index(batch, gk, self.n_hashes, self.n_buckets, length)
        return cache

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict, index: jax.Array, valid: jax.Array, rng: jax.Array
    ) -> tuple[jax.Array, dict]:
        """Cached LSH attention of T new tokens written to slots [index, index+T) (index scalar or [B]).

        x [B,T,D], positions [B,T], cache from ``init_cache``, valid [B,S] (slots holding real tokens),
        rng: this layer's key (the same rotations for every step) -> (out [B,T,D], updated cache).
        In each round a query attends to the valid earlier cached keys of its own bucket (itself
        included unless QK is shared), with the self fallback of the training forward; rounds are
        combined by logsumexp. A single new token reads only its bucket lists (``lsh_bucket_index``);
        otherwise the cache's blocks up to the last slot a query sees are read (``model/lsh_decode.py``).
        """
        b, t, _ = x.shape
        h, g, kd = self.n_heads, self.n_kv_heads, self.head_dim
        with jax.ensure_compile_time_eval():  # a fixed key (generation): the rotations are constants of
            rot = self.rotations(rng)  # the compiled step, not drawn again at every token (~0.1 ms a layer)
        q, k, v = self._project(x, positions)
        k = length_normalise(q) if self.shared_qk else k  # [B,T,Gk,K]
        k_buckets = hash_buckets(k.transpose(0, 2, 1, 3), rot, self.n_buckets).transpose(0, 3, 1, 2)  # [B,T,Gk,N]
        q_slot = query_slots(index, b, t)  # [B,T]
        new = {
            "k": write_slots(cache["k"], k, index),
            "v": write_slots(cache["v"], v, index),
            "buckets": write_slots(cache["buckets"], k_buckets, index),
        }
        if "index" in cache:
            new["index"] = write_index(cache["index"], k_buckets, q_slot, jnp.take_along_axis(valid, q_slot, axis=1))
        qg = q.reshape(b, t, g, h // g, kd)  # [B,T,G,R,K]
        q_buckets = hash_buckets(q.transpose(0, 2, 1, 3), rot, self.n_buckets)  # [B,H,N,T]
        q_buckets = q_buckets.reshape(b, g, h // g, self.n_hashes, t)  # [B,G,R,N,T]
        # one new token reads its bucket lists; a write of several (prefill, chunked reading) reads the
        # filled blocks, whose keys all its queries share (measured: a 240-token prefill took 44 ms
        # through the lists, 31 ms through the blocks)
        if "index" in new and t == 1:
            m, total, acc = bucket_rounds(qg, q_buckets, new, valid, q_slot, self.shared_qk)
        else:
            m, total, acc = masked_rounds(qg, q_buckets, new, valid, q_slot, self.shared_qk, self.decode_block)
        lse = jnp.logaddexp(m + jnp.log(total), SELF_VALUE)  # [B,G,R,N,T], the self fallback included
        weights = jax.nn.softmax(lse, axis=3)  # rounds
        out = jnp.einsum("bgrnt,bgrntk->btgrk", weights * jnp.exp(m - lse), acc)  # the rounds' outputs, mixed
        self_w = jnp.sum(jnp.exp(SELF_VALUE - lse) * weights, axis=3)  # [B,G,R,T]
        out = out + self_w.transpose(0, 3, 1, 2)[..., None] * v.reshape(b, t, g, 1, kd).astype(jnp.float32)
        out = out.astype(self.dtype).reshape(b, t, h * kd)
        return out @ self.wo[...].astype(self.dtype), new
