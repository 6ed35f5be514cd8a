"""Reformer LSH attention in plain PyTorch: the reference of ``open_r1_jax/model/lsh_attention.py``
(see its docstring for the algorithm), step for step. The module around it (projections, rotary) is
``torch_ref.layers.LSHAttention``.

Shape letters: B batch, T time, Tp time padded to whole chunks, H query heads, K head width,
N hash rounds, U buckets, M chunks, C chunk length, W = 2C keys a chunk sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_VALUE = -1e30  # also full attention's (torch_ref.layers); open_r1_jax.model.attention.MASK_VALUE
LSH_SELF_VALUE = -1e5  # score of a query's fallback slot on itself (JAX: SELF_VALUE)
LSH_NORM_EPS = 1e-6
LSH_BIG_TIME = 2**30


def lsh_buckets(x: torch.Tensor, rotations: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """x [B,H,T,K], rotations [K,N,U/2] -> buckets [B,H,N,T] (argmax over [xR, -xR]; U = 1: all 0)."""
    if n_buckets == 1:
        return torch.zeros(*x.shape[:2], rotations.shape[1], x.shape[2], dtype=torch.long, device=x.device)
    rotated = torch.einsum("bhtk,knu->bhntu", x.float(), rotations.float())
    return torch.argmax(torch.cat([rotated, -rotated], dim=-1), dim=-1)


def _lsh_chunks(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B,H,N,Tp,...] -> [B,H,N,M,C,...]."""
    return x.reshape(*x.shape[:3], x.shape[3] // c, c, *x.shape[4:])


def _lsh_with_previous(x: torch.Tensor, fill) -> torch.Tensor:
    """[B,H,N,M,C,...] -> [B,H,N,M,W,...]: the previous chunk, then the chunk (``fill`` before chunk 0)."""
    prev = torch.cat([torch.full_like(x[:, :, :, :1], fill), x[:, :, :, :-1]], dim=3)
    return torch.cat([prev, x], dim=4)


def _lsh_gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B,H,Tp,K], order [B,H,N,Tp] -> [B,H,N,Tp,K]."""
    n = order.shape[2]
    src = x[:, :, None].expand(-1, -1, n, -1, -1)
    return torch.gather(src, 3, order[..., None].expand(-1, -1, -1, -1, x.shape[-1]))


def lsh_attention(q, k, v, segment_ids, rotations, n_buckets: int, chunk_size: int, shared_qk: bool):
    """q [B,T,H,K], k [B,T,G,K] (None with shared_qk), v [B,T,G,K], segment_ids [B,T], rotations [K,N,U/2]
    -> [B,T,H,K]. Sort queries and keys by (bucket, time); chunk m of queries sees key chunks m-1, m;
    causal + segment masks by original time (own key masked with shared QK); a fallback slot on the
    query's own value at LSH_SELF_VALUE; unsort; rounds weighted by softmax of their logsumexp."""
    b, t, h, kd = q.shape
    r = h // v.shape[2]
    c = min(chunk_size, t)
    tp = -(-t // c) * c
    pad = lambda x: F.pad(x, (0, 0, 0, tp - t))  # [B,H,T,K] -> [B,H,Tp,K]
    qh = pad(q.transpose(1, 2))
    vh = pad(v.repeat_interleave(r, dim=2).transpose(1, 2))
    if shared_qk:
        q32 = qh.float()
        kh = (q32 * torch.rsqrt((q32 * q32).sum(-1, keepdim=True) + LSH_NORM_EPS)).to(qh.dtype)
    else:
        kh = pad(k.repeat_interleave(r, dim=2).transpose(1, 2))
    seg = F.pad(segment_ids, (0, tp - t), value=-1)  # [B,Tp]
    time = torch.arange(tp, device=q.device)

    q_order = torch.argsort(lsh_buckets(qh, rotations, n_buckets) * tp + time, dim=-1)  # [B,H,N,Tp]
    k_order = q_order if shared_qk else torch.argsort(lsh_buckets(kh, rotations, n_buckets) * tp + time, dim=-1)
    n = q_order.shape[2]
    seg_of = lambda order: torch.gather(seg[:, None, None].expand(-1, h, n, -1), 3, order)

    qc = _lsh_chunks(_lsh_gather(qh, q_order), c)  # [B,H,N,M,C,K]
    q_time, q_seg = _lsh_chunks(q_order, c), _lsh_chunks(seg_of(q_order), c)  # [B,H,N,M,C]
    v_self = _lsh_chunks(_lsh_gather(vh, q_order), c)
    kw = _lsh_with_previous(_lsh_chunks(_lsh_gather(kh, k_order), c), 0)  # [B,H,N,M,W,K]
    vw = _lsh_with_previous(_lsh_chunks(_lsh_gather(vh, k_order), c), 0)
    k_time = _lsh_with_previous(_lsh_chunks(k_order, c), LSH_BIG_TIME)  # [B,H,N,M,W]
    k_seg = _lsh_with_previous(_lsh_chunks(seg_of(k_order), c), -2)

    scores = torch.einsum("bhnmck,bhnmwk->bhnmcw", qc, kw).float() * kd**-0.5  # [B,H,N,M,C,W]
    mask = (k_time[..., None, :] <= q_time[..., None]) & (k_seg[..., None, :] == q_seg[..., None])
    if shared_qk:
        mask = mask & (k_time[..., None, :] != q_time[..., None])
    scores = torch.where(mask, scores, torch.full_like(scores, MASK_VALUE))
    scores = torch.cat([scores, torch.full_like(scores[..., :1], LSH_SELF_VALUE)], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)  # [B,H,N,M,C]
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhnmcw,bhnmwk->bhnmck", probs[..., :-1].to(v.dtype), vw).float()
    out = out + probs[..., -1:] * v_self.float()  # [B,H,N,M,C,K]

    undo = torch.argsort(q_order, dim=-1)
    out = torch.gather(out.reshape(b, h, n, tp, kd), 3, undo[..., None].expand(-1, -1, -1, -1, kd))
    lse = torch.gather(lse.reshape(b, h, n, tp), 3, undo)  # [B,H,N,Tp]
    weights = torch.softmax(lse, dim=2)
    out = (out * weights[..., None]).sum(dim=2)  # [B,H,Tp,K]
    return out[:, :, :t].transpose(1, 2).to(q.dtype)
