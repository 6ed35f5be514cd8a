"""Slots of the decoding cache: where each row's new keys go and which slot each new query is at.

Legend: B batch (cache rows: prompts of one generation, or a server's sequence slots), T new tokens,
S cache slots.

``index`` is the first cache slot the T new tokens go to: a scalar (every row at the same place, as
``generate.Generator`` decodes) or [B] (each row its own place: continuous batching, where sequences
join and leave the batch at different lengths). A query at slot ``index + t`` sees the valid slots up
to its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def write_slots(cache: jax.Array, new: jax.Array, index: jax.Array, axis: int = 1) -> jax.Array:
    """cache [B, ..., S, ...] (slots on ``axis``) <- new [B,T,...] (the other axes in the cache's order)
    at slots [index, index+T) of each row (index scalar or [B])."""
    new = new.astype(cache.dtype)
    if jnp.ndim(index) == 0:
        start = [0] * cache.ndim
        start[axis] = index
        return jax.lax.dynamic_update_slice(cache, jnp.moveaxis(new, 1, axis), start)
    # one scatter of the [B,T] (row, slot) pairs, in place; a vmapped dynamic_update_slice becomes a
    # scatter with a batch dimension that XLA:CPU lowers through a copy of the whole cache
    rows = jnp.arange(cache.shape[0])[:, None]
    where = (rows, *[slice(None)] * (axis - 1), query_slots(index, cache.shape[0], new.shape[1]))
    return cache.at[where].set(new)  # advanced indices first: the update is [B,T,...]


def query_slots(index: jax.Array, batch: int, t: int) -> jax.Array:
    """-> [B,T] the cache slot of each new token."""
    return jnp.broadcast_to(jnp.asarray(index, jnp.int32).reshape(-1, 1), (batch, 1)) + jnp.arange(t)
