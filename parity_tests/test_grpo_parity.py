"""GRPO loss: JAX (the stage's per-token losses and normalisations) vs torch_ref, value and gradient
with respect to the policy's log-probs, with ratios far enough from 1 that both clips act."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from open_r1_jax.training.stages.grpo import grpo_token_losses, unit_losses, units
from torch_ref import grpo as torch_grpo


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("token_adv", [False, True])
@pytest.mark.parametrize("loss_type", ["bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("beta, eps_high", [(0.04, 0.2), (0.0, 0.28), (0.5, 0.2)])
def test_grpo_loss_and_grad_match_torch(loss_type, beta, eps_high, token_adv):
    rng = np.random.default_rng(0)
    b, t, eps = 8, 12, 0.2
    logp = rng.normal(-2.0, 0.5, (b, t)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)  # ratios from ~0.4 to ~2.5
    ref = (logp + rng.normal(0, 0.2, (b, t))).astype(np.float32)
    adv = rng.normal(0, 1, (b, t) if token_adv else b).astype(np.float32)  # per token: process supervision
    mask = (np.arange(t)[None] < rng.integers(3, t + 1, b)[:, None]).astype(np.float32)

    def jloss(lp):
        per_token, kl, low, high = grpo_token_losses(lp, old, ref, jnp.asarray(adv), eps, eps_high, beta)
        m = jnp.asarray(mask)
        return unit_losses(per_token, m, loss_type) / units(m, loss_type, t), (low, high)

    (jl, (low, high)), jg = jax.value_and_grad(jloss, has_aux=True)(jnp.asarray(logp))
    tl = torch.from_numpy(logp).requires_grad_()
    args = (torch.from_numpy(x) for x in (old, ref, adv, mask))
    loss, _, clip_frac = torch_grpo.grpo_loss(tl, *args, eps, eps_high, beta, loss_type, t)
    loss.backward()
    real = mask > 0
    assert np.any(np.asarray(low) & real) and np.any(np.asarray(high) & real)  # both clips are exercised
    clipped = (np.asarray(low) | np.asarray(high)) & real
    np.testing.assert_allclose(clipped.sum() / real.sum(), clip_frac.item(), rtol=1e-6)
    assert rel(jl, loss.item()) < 1e-5 and rel(jg, tl.grad.numpy()) < 1e-5
    # clipped tokens carry no policy gradient (only the KL's, beta (1 - exp(ref - logp)))
    kl_grad = beta * (1 - np.exp(ref - logp)) * mask / np.asarray(units(jnp.asarray(mask), loss_type, t))
    if loss_type == "bnpo":
        np.testing.assert_allclose(np.asarray(jg)[clipped], kl_grad[clipped], rtol=1e-4, atol=1e-7)


def test_unclipped_gradient_is_the_policy_gradient():
    """With logp == old (one iteration) and beta 0: d loss / d logp_t = -A / (completion tokens)."""
    logp = jnp.asarray(np.random.default_rng(1).normal(-1, 0.3, (4, 5)), jnp.float32)
    adv, mask = jnp.asarray([1.0, -0.5, 2.0, 0.0]), jnp.ones((4, 5))
    g = jax.grad(
        lambda lp: (
            unit_losses(grpo_token_losses(lp, jax.lax.stop_gradient(lp), lp, adv, 0.2, 0.2, 0.0)[0], mask, "bnpo")
            / 20.0
        )
    )(logp)
    np.testing.assert_allclose(g, -np.broadcast_to(np.asarray(adv)[:, None], (4, 5)) / 20.0, rtol=1e-6)
