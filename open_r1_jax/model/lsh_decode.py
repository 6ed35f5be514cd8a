"""Cached LSH attention for decoding: the two ways ``LSHAttention.decode`` reads the cache, and the
bucket index that lets it read only the query's buckets.

Legend: B batch (cache rows), T new tokens, S cache slots, G key/value heads, R = H/G query heads per
key/value head, Gk key groups (H with shared QK, else G), N hash rounds, U buckets, C slots (or list
entries) per block, K head width.

A new query attends, in each round, to the valid cached keys of its own bucket up to its own slot
(not itself with shared QK). Both reads return each round's online-softmax state (running max and sum
[B,G,R,N,T], weighted values [B,G,R,N,T,K]); ``LSHAttention.decode`` adds the self fallback and
combines the rounds.

- ``masked_rounds`` scores every key of the cache's blocks up to the last query's slot and masks the
  keys of other buckets: its cost follows what is cached, all buckets included.
- ``bucket_rounds`` reads the bucket index: per row, key group, round and bucket, the list of cache
  slots whose key fell in that bucket, in increasing order (``write_index`` appends at prefill and at
  every decode write). It gathers only the entries of the query's list, C at a time, so its cost
  follows the size of the query's bucket (about what is cached / U). Each query gathers its own keys
  ([B,G,R,N,T,C,K]), so ``LSHAttention.decode`` uses it for one new token and the masked read for
  several (their queries share the blocks' keys).

Each list is sized to the cache (S entries): a list holds distinct slots, so it can never overflow,
at B*Gk*N*U*S int32 of memory (N*U/K times the keys' fp32 memory: 2x with the defaults N=2, U=32, K=32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from open_r1_jax.model.attention import MASK_VALUE, online_softmax_init, online_softmax_step

BUCKET_BLOCK = 32  # list entries per block of bucket_rounds' loop; 8 to 64 measured alike (tiny model, 256-2048 cached)


def init_index(batch: int, groups: int, n_hashes: int, n_buckets: int, length: int) -> dict:
    """Empty bucket index of a cache of ``length`` slots: slots [B,Gk,N,U,S] and counts [B,Gk,N,U] int32."""
    return {
        "slots": jnp.zeros((batch, groups, n_hashes, n_buckets, length), jnp.int32),
        "counts": jnp.zeros((batch, groups, n_hashes, n_buckets), jnp.int32),
    }


def _entries_before(slots: jax.Array, counts: jax.Array, first: jax.Array) -> jax.Array:
    """-> [B,Gk,N,U] how many entries of each list are slots < first [B]: a binary search (lists are
    sorted), log2(S) small gathers instead of a pass over every list."""
    first = first[:, None, None, None]
    last = slots.shape[-1] - 1

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        below = (lo < hi) & (jnp.take_along_axis(slots, jnp.minimum(mid, last)[..., None], axis=-1)[..., 0] < first)
        return jnp.where(below, mid + 1, lo), jnp.where(below | (lo == hi), hi, mid)

    lo, _ = jax.lax.fori_loop(0, slots.shape[-1].bit_length(), halve, (jnp.zeros_like(counts), counts))
    return lo


def write_index(index: dict, buckets: jax.Array, q_slot: jax.Array, valid: jax.Array) -> dict:
    """Append T new keys to the index: buckets [B,T,Gk,N] of the keys written at slots q_slot [B,T]
    (consecutive), valid [B,T] (padding is not indexed) -> the updated index.

    Each row's entries at its first new slot or later are dropped first: a row that writes at an
    earlier slot than before (the engine's idle rows rewrite slot 0 every step; a caller that rewinds)
    starts over from there, so no slot is listed twice or under the bucket of a key it no longer holds.
    A row that moves forward has nothing to drop, and the search is skipped."""
    slots, counts = index["slots"], index["counts"]
    b, t, gk, n = buckets.shape
    first = q_slot[:, 0]
    tail = jnp.take_along_axis(slots, jnp.maximum(counts - 1, 0)[..., None], axis=-1)[..., 0]  # [B,Gk,N,U]
    stale = jnp.any((counts > 0) & (tail >= first[:, None, None, None]))
    counts = jax.lax.cond(stale, _entries_before, lambda s, c, f: c, slots, counts, first)

    new = (buckets[..., None] == jnp.arange(counts.shape[-1])) & valid[:, :, None, None, None]  # [B,T,Gk,N,U]
    new = new.astype(jnp.int32)
    rank = counts[:, None] + jnp.cumsum(new, axis=1) - new  # list position of each new key in each bucket
    pos = jnp.take_along_axis(rank, buckets[..., None], axis=-1)[..., 0]  # [B,T,Gk,N]
    pos = jnp.where(valid[:, :, None, None], pos, slots.shape[-1])  # padding: out of range, dropped
    where = (
        jnp.arange(b)[:, None, None, None],
        jnp.arange(gk)[None, None, :, None],
        jnp.arange(n)[None, None, None, :],
        buckets,
        pos,
    )  # [B,T,Gk,N] each: the list entry of every new key
    slots = slots.at[where].set(jnp.broadcast_to(q_slot[:, :, None, None], pos.shape), mode="drop")
    return {"slots": slots, "counts": counts + new.sum(axis=1)}


def masked_rounds(
    qg: jax.Array, q_buckets: jax.Array, cache: dict, valid: jax.Array, q_slot: jax.Array, shared_qk: bool, block: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """qg [B,T,G,R,K] queries, q_buckets [B,G,R,N,T], cache {"k" [B,S,Gk,K], "v" [B,S,G,K], "buckets"
    [B,S,Gk,N]}, valid [B,S], q_slot [B,T] -> each round's online-softmax state. ``block`` 0 (or a
    cache of at most one block): the whole cache at once; else the blocks up to the last slot a query
    sees (``attention.cached_attention``)."""
    b, t, g, r, kd = qg.shape
    n = q_buckets.shape[3]
    s = cache["k"].shape[1]

    def one_block(carry, start, c, first):
        """Cache slots [start, start+c) into the carry; those of other buckets, of later or empty slots
        and before ``first`` (counted already) masked."""
        ks, kbs, vs = (jax.lax.dynamic_slice_in_dim(cache[x], start, c, axis=1) for x in ("k", "buckets", "v"))
        if shared_qk:
            ks = ks.reshape(b, c, g, r, kd)  # [B,C,G,R,K]
            scores = jnp.einsum("btgrk,bsgrk->bgrts", qg, ks, preferred_element_type=jnp.float32)
            kb = kbs.reshape(b, c, g, r, n).transpose(0, 2, 3, 4, 1)  # [B,G,R,N,C]
        else:
            scores = jnp.einsum("btgrk,bsgk->bgrts", qg, ks, preferred_element_type=jnp.float32)
            kb = kbs.transpose(0, 2, 3, 1)[:, :, None]  # [B,G,1,N,C]
        slots = start + jnp.arange(c)
        visible = (slots >= first) & (slots <= q_slot[:, :, None])  # [B,T,C]
        visible &= jax.lax.dynamic_slice_in_dim(valid, start, c, axis=1)[:, None, :]
        if shared_qk:
            visible &= slots != q_slot[:, :, None]
        mask = (kb[:, :, :, :, None, :] == q_buckets[..., None]) & visible[:, None, None, None]
        scores = jnp.where(mask, scores[:, :, :, None] * kd**-0.5, MASK_VALUE)  # [B,G,R,N,T,C]
        pv = lambda p: jnp.einsum("bgrnts,bsgk->bgrntk", p.astype(vs.dtype), vs, preferred_element_type=jnp.float32)
        return online_softmax_step(carry, scores, pv)

    carry = online_softmax_init((b, g, r, n, t), kd)
    if not block or s <= block:
        return one_block(carry, 0, s, 0)
    one = lambda i, c: one_block(c, jnp.minimum(i * block, s - block), block, i * block)
    return jax.lax.fori_loop(0, jnp.max(q_slot) // block + 1, one, carry)


def bucket_rounds(
    qg: jax.Array, q_buckets: jax.Array, cache: dict, valid: jax.Array, q_slot: jax.Array, shared_qk: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same as ``masked_rounds`` (up to summation order), reading only the query's bucket lists
    of ``cache["index"]`` in blocks of BUCKET_BLOCK entries, up to the longest list a query reads (the
    trip count is computed on the device: one compilation serves every fill level)."""
    b, t, g, r, kd = qg.shape
    n = q_buckets.shape[3]
    lists, c = cache["index"]["slots"], BUCKET_BLOCK
    # index arrays [B,G,R,N,T,1]: the row, key group, round and bucket of each query's list
    row = jnp.arange(b).reshape(b, 1, 1, 1, 1, 1)
    head = jnp.arange(g).reshape(1, g, 1, 1, 1, 1)  # the value head
    group = head * r + jnp.arange(r).reshape(1, 1, r, 1, 1, 1) if shared_qk else head  # the keys' head
    rnd = jnp.arange(n).reshape(1, 1, 1, n, 1, 1)
    bucket = q_buckets[..., None]
    counts = cache["index"]["counts"][row, group, rnd, bucket]  # [B,G,R,N,T,1]
    q_at = q_slot[:, None, None, None, :, None]  # [B,1,1,1,T,1]
    q = qg.transpose(0, 2, 3, 1, 4)  # [B,G,R,T,K]

    def one_block(i, carry):
        pos = i * c + jnp.arange(c)  # [C] list positions
        slots = lists[row, group, rnd, bucket, jnp.minimum(pos, lists.shape[-1] - 1)]  # [B,G,R,N,T,C]
        keys, values = cache["k"][row, slots, group], cache["v"][row, slots, head]  # [B,G,R,N,T,C,K]
        scores = jnp.einsum("bgrtk,bgrntck->bgrntc", q, keys, preferred_element_type=jnp.float32) * kd**-0.5
        visible = (pos < counts) & (slots <= q_at) & valid[row, slots]
        if shared_qk:
            visible &= slots != q_at
        pv = lambda p: jnp.einsum(
            "bgrntc,bgrntck->bgrntk", p.astype(values.dtype), values, preferred_element_type=jnp.float32
        )
        return online_softmax_step(carry, jnp.where(visible, scores, MASK_VALUE), pv)

    n_blocks = (jnp.max(counts) + c - 1) // c
    return jax.lax.fori_loop(0, n_blocks, one_block, online_softmax_init((b, g, r, n, t), kd))
