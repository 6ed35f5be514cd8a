"""A plain PyTorch GPT of a dense config's shape, written as a PyTorch user writes one (nanoGPT's
style): the yardstick of the CPU step-speed issue, which was filed against such a model.

``torch_ref`` mirrors the JAX model formula for formula (segment masks as 5-D einsums, a DRN router
even over one expert, its gradient norm in float64): right for parity, slower than idiomatic eager
PyTorch. This model has the same arithmetic as a dense config (``drn_layers == n_layers``, one DRN
expert): RMSNorm, rotary ("rotate half"), grouped-query attention, a SwiGLU of the expert's width, an
untied (or tied) LM head, AdamW with clipping and the warm-up/cosine schedule. What it does not do is
what nanoGPT does not do either: attention is causal over the whole row
(``F.scaled_dot_product_attention(is_causal=True)``, no document mask), and gate|up and q|k|v are
one ``nn.Linear`` each. Weights are freshly initialised (a speed yardstick, not a parity check).

Legend: B batch, T time, D model width, H query heads, G key/value heads, K head width, F hidden width.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from open_r1_jax.config import to_dict
from torch_ref.train import lr_at, make_optimizer


def is_dense(model_cfg) -> bool:
    """Whether ``model_cfg`` is a plain dense GPT: every block a DRN block of one expert, no adapters,
    full attention."""
    return (
        model_cfg.drn_layers == model_cfg.n_layers
        and model_cfg.drn.n_experts == 1
        and not model_cfg.vision.enabled
        and not model_cfg.audio.enabled
        and model_cfg.attention.kind == "full"
        and not model_cfg.attention.lsh_layers
    )


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary, "rotate half": x [B,T,N,K], cos/sin [B,T,1,K]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, d: int, h: int, g: int, kd: int, f: int, eps: float):
        super().__init__()
        self.h, self.g, self.kd = h, g, kd
        self.attn_norm, self.ffn_norm = nn.RMSNorm(d, eps=eps), nn.RMSNorm(d, eps=eps)
        self.qkv = nn.Linear(d, (h + 2 * g) * kd, bias=False)
        self.o = nn.Linear(h * kd, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, -1, self.kd).split([self.h, self.g, self.g], dim=2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=self.g != self.h
        )  # [B,H,T,K]
        x = x + self.o(y.transpose(1, 2).reshape(b, t, -1))
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class PlainGPT(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.theta = m.attention.rope_theta
        self.embed = nn.Embedding(m.vocab_size, m.d_model)
        f = m.drn.expert_ffn_dim
        self.blocks = nn.ModuleList(
            Block(m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, f, m.norm_eps) for _ in range(m.n_layers)
        )
        self.norm = nn.RMSNorm(m.d_model, eps=m.norm_eps)
        self.head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
        for p in self.parameters():
            if p.ndim >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kd = self.blocks[0].kd
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, kd, 2, dtype=torch.float32) / kd))
        angles = positions.float()[..., None] * inv_freq  # [B,T,K/2]
        angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [B,T,1,K]
        cos, sin = angles.cos(), angles.sin()
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        return self.head(x) if self.head is not None else x @ self.embed.weight.T


class PlainTorchStep:
    """The plain model's eager train step on ``batch`` (its tokens, positions and padding), timed as
    ``common.TorchRefStep``: torch_ref's AdamW and schedule (``make_optimizer``, ``lr_at``), torch's
    own gradient clipping."""

    def __init__(self, cfg, batch: dict[str, np.ndarray], warmup: int = 2):
        if not is_dense(cfg.model):
            raise ValueError("the plain PyTorch GPT covers dense configs only (drn_layers == n_layers, one DRN expert)")
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        self.model, self.train = PlainGPT(cfg.model), to_dict(cfg.train)
        self.opt = make_optimizer(self.model, self.train)  # torch_ref's AdamW groups: decay on matrices
        targets = torch.from_numpy(batch["targets"]).long()
        self.targets = targets.masked_fill(torch.from_numpy(batch["segment_ids"] == 0), -100)  # padding
        self.inputs = torch.from_numpy(batch["inputs"]).long()
        self.positions = torch.from_numpy(batch["positions"]).long()
        self.i = 1
        self.run(warmup)

    def run(self, n: int) -> float:
        t, t0 = self.train, time.perf_counter()
        for _ in range(n):
            logits = self.model(self.inputs, self.positions)
            loss = F.cross_entropy(logits.flatten(0, 1), self.targets.flatten(), ignore_index=-100)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if t["clip_norm"] > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), t["clip_norm"])
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.i, t["lr"], t["min_lr"], t["warmup_steps"], t["steps"])
            self.opt.step()
            self.i += 1
        return (time.perf_counter() - t0) / max(n, 1)
