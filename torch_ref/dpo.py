"""DPO losses in PyTorch, mirroring ``open_r1_jax.training.stages.dpo`` (TRL's DPOTrainer formulas).

h = (logp_c - ref_c) - (logp_r - ref_r); sigmoid: -(1-eps) logsigmoid(beta h) - eps logsigmoid(-beta h);
ipo: (h_avg - 1/(2 beta))^2 with per-token averaged log-probs; hinge: relu(1 - beta h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, ...]:
    """Chosen and rejected rows in one forward -> (logp_c, logp_r, n_c, n_r, aux_loss)."""
    cat = lambda k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
    inputs, targets, mask, seg = cat("inputs").long(), cat("targets").long(), cat("mask").float(), cat("segment_ids")
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    logits, aux = model(inputs, positions, seg)
    tok = torch.gather(F.log_softmax(logits, -1), -1, targets[..., None])[..., 0]
    lp, n = (tok * mask).sum(-1), mask.sum(-1).clamp(min=1.0)
    p = lp.shape[0] // 2
    return lp[:p], lp[p:], n[:p], n[p:], aux["aux_loss"]


def dpo_loss(pc, pr, rc, rr, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0, n_c=None, n_r=None):
    h = (pc - rc) - (pr - rr)
    if loss == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        losses = ((pc - rc) / n_c - (pr - rr) / n_r - 1 / (2 * beta)) ** 2
    elif loss == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {loss!r}; accepted: sigmoid, ipo, hinge")
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    metrics = {
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/accuracies": (r_c > r_r).float().mean(),
        "rewards/margins": (r_c - r_r).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }
    return losses, metrics
