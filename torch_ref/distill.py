"""Knowledge-distillation loss in PyTorch, mirroring ``open_r1_jax.training.stages.distill``.

Per token: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, target), written with
``F.kl_div`` (input = student log-probs, target = teacher log-probs) as PyTorch distillation code does.
"""

from __future__ import annotations

import torch.nn.functional as F


def distill_token_losses(student_logits, teacher_logits, targets, alpha: float, temperature: float):
    """[B,T,V] logits and targets [B,T] -> (loss, kl, ce) per token [B,T]."""
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    ce = F.cross_entropy(student_logits.flatten(0, 1), targets.flatten().long(), reduction="none").view(targets.shape)
    return alpha * t * t * kl + (1 - alpha) * ce, kl, ce
