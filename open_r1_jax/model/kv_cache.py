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


def write_slots(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """cache [B,S,...] <- new [B,T,...] at slots [index, index+T) of each row (index scalar or [B])."""
    zeros = (0,) * (cache.ndim - 2)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, index, *zeros))
    row = lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (i, *zeros))
    return jax.vmap(row)(cache, new.astype(cache.dtype), index)


def query_slots(index: jax.Array, batch: int, t: int) -> jax.Array:
    """-> [B,T] the cache slot of each new token."""
    return jnp.broadcast_to(jnp.asarray(index, jnp.int32).reshape(-1, 1), (batch, 1)) + jnp.arange(t)
