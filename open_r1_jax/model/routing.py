"""Routers and their auxiliary losses.

Legend: N tokens (flattened batch x time), E experts, A active experts per token (top-k).

- ``dense_routing`` is the seed's dynamic routing network (DRN): softmax over all experts.
- ``topk_softmax``: probs = softmax(logits), keep the top-k, optionally renormalise (Mixtral, Switch).
- ``topk_sigmoid_bias``: DeepSeek-V3. Affinity s = sigmoid(logits); experts are *selected* by the
  top-k of s + bias but *weighted* by the unbiased s, renormalised over the selection, times a scale.
  The bias is non-trainable; ``bias_update`` moves it toward balanced loads after each step.

Auxiliary losses (raw values; coefficients are applied by the caller):
- Switch balance loss: E * sum_i f_i P_i, f_i = share of the N*A (token, slot) assignments that go
  to expert i (for A = 1 this is Switch's top-1 fraction), P_i = mean normalised router probability.
- Sequence-wise balance loss (DeepSeek-V3): per row, sum_i f_i P_i with f_i = E/(A*T) * count_i;
  averaged over rows.
- Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2.
Padding tokens (mask 0) are left out of every statistic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def topk_softmax(logits: jax.Array, k: int, renormalize: bool):
    """logits [N,E] fp32 -> (weights [N,A], experts [N,A], normalised probs [N,E])."""
    probs = jax.nn.softmax(logits, axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts, probs


def topk_sigmoid_bias(logits: jax.Array, bias: jax.Array, k: int, renormalize: bool):
    """DeepSeek-V3: select by sigmoid + bias, weight by the unbiased sigmoid."""
    scores = jax.nn.sigmoid(logits)
    _, experts = jax.lax.top_k(scores + jax.lax.stop_gradient(bias), k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if renormalize:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
    return weights, experts, probs


def aux_losses(logits: jax.Array, probs: jax.Array, experts: jax.Array, mask: jax.Array, k: int):
    """logits/probs [B,T,E], experts [B,T,A], mask [B,T] -> dict of raw aux losses and loads."""
    n_experts = logits.shape[-1]
    m = mask.astype(jnp.float32)
    n_valid = jnp.maximum(jnp.sum(m), 1.0)
    row_valid = jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [B]
    # per-row loads and probability mass; the batch figures are their sums (one pass over [B,T,A,E])
    row_counts = jnp.einsum("btae,bt->be", jax.nn.one_hot(experts, n_experts, dtype=jnp.float32), m)
    row_probs = jnp.einsum("bte,bt->be", probs, m)
    counts = jnp.sum(row_counts, axis=0)  # [E] (token, slot) assignments per expert
    balance = n_experts * jnp.sum(counts / (n_valid * k) * jnp.sum(row_probs, axis=0) / n_valid)
    # sequence-wise (per row of the batch)
    f = n_experts / (k * row_valid[:, None]) * row_counts
    seq_balance = jnp.mean(jnp.sum(f * row_probs / row_valid[:, None], axis=-1))
    z = jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * m) / n_valid
    return {"balance_loss": balance, "seq_balance_loss": seq_balance, "z_loss": z, "expert_counts": counts}


def bias_update(bias: jax.Array, counts: jax.Array, rate: float) -> jax.Array:
    """DeepSeek-V3 aux-loss-free balancing: b_i += rate * sign(mean_load - load_i)."""
    return bias + rate * jnp.sign(jnp.mean(counts, axis=-1, keepdims=True) - counts)
