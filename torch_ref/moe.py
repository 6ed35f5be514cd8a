"""The reference's feed-forward layers: stacked SwiGLU experts, the routers (top-k softmax, DeepSeek-V3
sigmoid + bias) with their auxiliary losses, the DRN's dense mixture and the MoE layer (dense dispatch:
every expert runs, outputs mixed by the routing weights). Shape letters as in ``torch_ref/model.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.config import DRNConfig, MoEConfig
from torch_ref.layers import SwiGLU


class Experts(nn.Module):
    """E stacked SwiGLU experts: w_gate/w_up [E,D,F], w_down [E,F,D] (JAX layout, not transposed)."""

    def __init__(self, n_experts: int, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_down = nn.Parameter(torch.empty(n_experts, ffn_dim, d_model))

    def forward(self, x: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
        """Dense dispatch. x [N,D], combine [N,E] routing weights (0 where not routed) -> [N,D]."""
        g = torch.einsum("nd,edf->nef", x, self.w_gate)  # [N,E,F]
        u = torch.einsum("nd,edf->nef", x, self.w_up)  # [N,E,F]
        hidden = F.silu(g) * u * combine[:, :, None].to(x.dtype)
        return torch.einsum("nef,efd->nd", hidden, self.w_down)


def topk_softmax(logits: torch.Tensor, k: int, renormalize: bool):
    """logits [N,E] -> (weights [N,A], experts [N,A], probs [N,E])."""
    probs = torch.softmax(logits, dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts, probs


def topk_sigmoid_bias(logits: torch.Tensor, bias: torch.Tensor, k: int, renormalize: bool):
    """DeepSeek-V3: experts selected by top-k of sigmoid + bias, weighted by the unbiased sigmoid."""
    scores = torch.sigmoid(logits)
    _, experts = torch.topk(scores + bias.detach(), k, dim=-1)
    weights = torch.gather(scores, -1, experts)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    probs = scores / scores.sum(dim=-1, keepdim=True)
    return weights, experts, probs


def aux_losses(logits, probs, experts, mask, k: int) -> dict[str, torch.Tensor]:
    """logits/probs [B,T,E], experts [B,T,A], mask [B,T] -> raw aux losses and loads (padding left out)."""
    n_experts = logits.shape[-1]
    m = mask.float()
    n_valid = torch.clamp(m.sum(), min=1.0)
    onehot = F.one_hot(experts, n_experts).float()  # [B,T,A,E]
    counts = torch.einsum("btae,bt->e", onehot, m)  # [E]
    p_mean = torch.einsum("bte,bt->e", probs, m) / n_valid
    balance = n_experts * torch.sum(counts / (n_valid * k) * p_mean)
    row_valid = torch.clamp(m.sum(dim=1), min=1.0)  # [B]
    row_counts = torch.einsum("btae,bt->be", onehot, m)
    f = n_experts / (k * row_valid[:, None]) * row_counts
    p_row = torch.einsum("bte,bt->be", probs, m) / row_valid[:, None]
    seq_balance = torch.mean(torch.sum(f * p_row, dim=-1))
    z = torch.sum(torch.square(torch.logsumexp(logits, dim=-1)) * m) / n_valid
    return {"balance_loss": balance, "seq_balance_loss": seq_balance, "z_loss": z, "expert_counts": counts}


# ----------------------------------------------------------------------------- feed-forward layers


class DRNFeedForward(nn.Module):
    """Dynamic routing network: out = sum_e softmax(router(x))_e * expert_e(x), all experts."""

    def __init__(self, d_model: int, cfg: DRNConfig):
        super().__init__()
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        self.experts = Experts(cfg.n_experts, d_model, cfg.expert_ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        b, t, d = x.shape
        probs = torch.softmax(self.router(x.float()), dim=-1)  # [B,T,E]
        out = self.experts(x.reshape(b * t, d), probs.reshape(b * t, -1))
        return out.view(b, t, d), {}


class MoEFeedForward(nn.Module):
    """Sparse top-k routed experts (dense dispatch) + optional shared experts, with aux losses."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        if cfg.router not in ("softmax", "sigmoid"):
            raise ValueError(f"moe.router: got {cfg.router!r}; accepted: 'softmax' or 'sigmoid'")
        self.cfg = cfg
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        if cfg.router == "sigmoid":
            self.register_buffer("router_bias", torch.zeros(cfg.n_experts))
        self.experts = Experts(cfg.n_experts, d_model, cfg.expert_ffn_dim)
        if cfg.n_shared_experts:
            self.shared = SwiGLU(d_model, cfg.n_shared_experts * cfg.expert_ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x [B,T,D], mask [B,T] (True = real token) -> (out [B,T,D], aux dict)."""
        cfg = self.cfg
        b, t, d = x.shape
        logits = self.router(x.float())  # [B,T,E]
        if cfg.router == "sigmoid":
            weights, experts, probs = topk_sigmoid_bias(logits, self.router_bias, cfg.top_k, cfg.renormalize)
        else:
            weights, experts, probs = topk_softmax(logits, cfg.top_k, cfg.renormalize)
        weights = weights * cfg.route_scale  # [B,T,A]
        aux = aux_losses(logits, probs, experts, mask, cfg.top_k)
        aux["expert_ids"] = experts
        aux["dropped"] = torch.zeros((), dtype=torch.int32)  # dense dispatch never drops (as JAX's aux)
        combine = torch.zeros_like(probs).scatter(-1, experts, weights)  # [B,T,E], 0 off the top-k
        out = self.experts(x.reshape(b * t, d), combine.reshape(b * t, -1)).view(b, t, d)
        if cfg.n_shared_experts:
            out = out + self.shared(x)
        return out, aux
