"""Knowledge-distillation loss in PyTorch, mirroring ``open_r1_jax.training.stages.distill``.

Per token: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, target), written with
``F.kl_div`` (input = student log-probs, target = teacher log-probs) as PyTorch distillation code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_token_losses(student_logits, teacher_logits, targets, alpha: float, temperature: float):
    """[B,T,V] logits and targets [B,T] -> (loss, kl, ce) per token [B,T]."""
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    ce = F.cross_entropy(student_logits.flatten(0, 1), targets.flatten().long(), reduction="none").view(targets.shape)
    return alpha * t * t * kl + (1 - alpha) * ce, kl, ce


def cached_kl(student_logits, ids, logp_t, rest_t, temperature: float):
    """KL over the teacher's top-k tokens ``ids`` [B,T,k] (log-probs ``logp_t``) and one outcome for all
    other tokens (``rest_t`` [B,T], log of their mass), as ``distill.cache_teacher`` trains -> [B,T]."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (logp_t.exp() * (logp_t - log_q.gather(-1, ids.long()))).sum(-1)
    if ids.shape[-1] >= log_q.shape[-1]:
        return kl
    q_rest = log_q.scatter(-1, ids.long(), float("-inf")).logsumexp(-1)
    p_rest = rest_t.exp()
    return kl + torch.where(p_rest > 0, p_rest * (rest_t - q_rest), torch.zeros_like(p_rest))
