"""GRPO loss in PyTorch, written from the DeepSeekMath / TRL formulas (not from the JAX code), to check
``open_r1_jax.training.stages.grpo``: clipped importance ratio, k3 KL to the reference, three
normalisations (TRL's ``bnpo``, ``grpo``, ``dr_grpo``)."""

from __future__ import annotations

import torch


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta, loss_type, max_new_tokens):
    """Per-token log-probs [B,T], advantages [B] (or per token [B,T], process supervision), completion
    mask [B,T] -> (loss, mean token kl, clipped-token fraction)."""
    coef_1 = torch.exp(logp - old_logp)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    per_token = per_token + beta * kl
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (per_token.size(0) * max_new_tokens)
    else:
        raise ValueError(loss_type)
    clipped = ((coef_1 < 1 - eps_low) & (adv < 0)) | ((coef_1 > 1 + eps_high) & (adv > 0))
    return loss, (kl * m).sum() / m.sum(), (clipped.to(m.dtype) * m).sum() / m.sum()
