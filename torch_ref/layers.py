"""The reference's building blocks: RMSNorm, rotary, the attention mask, grouped-query attention, the
LSH attention's projections (the attention itself is ``torch_ref/lsh_attention.py``) and SwiGLU.
Shape letters as in ``torch_ref/model.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.config import AttentionConfig
from torch_ref.lsh_attention import MASK_VALUE, lsh_attention  # one finite mask value for both attentions


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rotary(
    x: torch.Tensor, positions: torch.Tensor, theta: float, scaling: str = "none", factor: float = 1.0
) -> torch.Tensor:
    """x [B,T,*,K], positions [B,T] -> x rotated, "rotate half" pairs (i, i + K/2).
    scaling "linear": positions / factor; "ntk": base theta * factor^(K/(K-2))."""
    k = x.shape[-1]
    if scaling == "ntk":
        theta = theta * factor ** (k / max(k - 2, 1))
    inv_freq = 1.0 / (theta ** (torch.arange(0, k, 2, dtype=torch.float32, device=x.device) / k))  # [K/2]
    pos = positions.float()
    if scaling == "linear":
        pos = pos / factor
    angles = pos[..., None] * inv_freq  # [B,T,K/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [B,T,1,K]
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * torch.cos(angles) + rotated * torch.sin(angles)).to(x.dtype)


def attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B,T] -> [B,1,1,T,S] bool: key not after query and same segment."""
    t = segment_ids.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=segment_ids.device))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None, None]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, cfg: AttentionConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope = (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B,T,D], positions [B,T], mask [B,1,1,T,S] -> [B,T,D]."""
        b, t, _ = x.shape
        h, g, kd = self.n_heads, self.n_kv_heads, self.head_dim
        q = rotary(self.q_proj(x).view(b, t, h, kd), positions, *self.rope)  # [B,T,H,K]
        k = rotary(self.k_proj(x).view(b, t, g, kd), positions, *self.rope)  # [B,S,G,K]
        v = self.v_proj(x).view(b, t, g, kd)  # [B,S,G,K]
        q = q.view(b, t, g, h // g, kd)  # [B,T,G,R,K]
        scores = torch.einsum("btgrk,bsgk->bgrts", q, k).float()  # [B,G,R,T,S]
        scores = torch.where(mask, scores * kd**-0.5, torch.full_like(scores, MASK_VALUE))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.einsum("bgrts,bsgk->btgrk", probs, v)  # [B,T,G,R,K]
        return self.o_proj(out.reshape(b, t, h * kd))


# ----------------------------------------------------------------------------- LSH attention
# The attention itself is torch_ref/lsh_attention.py; here the projections and rotary around it.


class LSHAttention(nn.Module):
    """Projections and rotary of ``Attention`` (no k_proj with shared QK) around ``lsh_attention``."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, cfg: AttentionConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim, self.cfg = n_heads, n_kv_heads, head_dim, cfg
        self.rope = (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        if not cfg.shared_qk:
            self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def forward(self, x, positions, segment_ids, rotations):
        """x [B,T,D], positions/segment_ids [B,T], rotations [K,N,U/2] -> [B,T,D]."""
        b, t, _ = x.shape
        h, g, kd, cfg = self.n_heads, self.n_kv_heads, self.head_dim, self.cfg
        q = rotary(self.q_proj(x).view(b, t, h, kd), positions, *self.rope)
        k = None if cfg.shared_qk else rotary(self.k_proj(x).view(b, t, g, kd), positions, *self.rope)
        v = self.v_proj(x).view(b, t, g, kd)
        out = lsh_attention(q, k, v, segment_ids, rotations, cfg.n_buckets, cfg.chunk_size, cfg.shared_qk)
        return self.o_proj(out.reshape(b, t, h * kd))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the shared experts, merged into one network."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
