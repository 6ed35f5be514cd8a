"""Token losses and the DeepSeek-V3 router-bias update, mirroring ``open_r1_jax``.

Legend: B batch, T time, V vocabulary, E experts.
"""

from __future__ import annotations

import torch


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B,T,V] fp32, targets [B,T] long -> negative log-likelihood per token [B,T]."""
    logz = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, targets[..., None].long())[..., 0]
    return logz - picked


def summed_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """-> (sum of masked token NLL, number of masked-in tokens), both fp32 scalars."""
    m = mask.float()
    return torch.sum(token_nll(logits, targets) * m), torch.sum(m)


def bias_update(bias: torch.Tensor, counts: torch.Tensor, rate: float) -> torch.Tensor:
    """Aux-loss-free balancing: b_i += rate * sign(mean_load - load_i). counts [..., E]."""
    return bias + rate * torch.sign(counts.float().mean(dim=-1, keepdim=True) - counts.float())
