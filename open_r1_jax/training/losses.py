"""Token losses. Exact accumulation needs *sums* of token losses; callers divide by the global count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B,T,V] fp32, targets [B,T] int -> negative log-likelihood per token [B,T]."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - picked


def summed_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """-> (sum of masked token NLL, number of masked-in tokens), both fp32 scalars."""
    m = mask.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * m), jnp.sum(m)


def lm_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Held-out language-model figures from summed ``nll``, ``tokens`` and ``bytes`` (UTF-8 bytes of the
    predicted tokens): loss per token, perplexity, bits per byte (comparable across tokenizers)."""
    if sums["tokens"] == 0:
        return {}
    loss = sums["nll"] / sums["tokens"]
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 80.0)),
        "bits_per_byte": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0),
        "tokens": int(sums["tokens"]),
    }
