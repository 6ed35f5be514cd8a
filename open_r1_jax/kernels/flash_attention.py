"""Causal flash attention with segment ids (packed sequences) and grouped-query heads, in Triton.

Legend: B batch, T time, H query heads, G key/value heads, R = H/G query heads per key/value head,
K head width, BM query block, BN key block, BD = K rounded up to a power of two.

Follows FlashAttention-2 (Dao, 2023): the forward pass streams key blocks through an online softmax
and saves the logsumexp per query row; the backward pass recomputes the probabilities from it.
- Mask: key s is visible to query t when s <= t and segment_ids[t] == segment_ids[s] (segment 0 is
  padding and, as in ``open_r1_jax.model.attention``, attends to padding). Key blocks after the query
  block are never loaded (causal skipping).
- Scores are scaled by K^-0.5 and exponentiated with exp2 (the scale folds in log2(e)); the saved
  logsumexp is in natural-log units, [B,H,T] fp32.
- Backward: delta = rowsum(dO * O) in jnp; ``flash_bwd_dkdv_kernel`` runs one program per (key block,
  batch, key/value head) and loops over the R query heads that share it and the query blocks at or
  after the key block, so dK/dV need no atomics; ``flash_bwd_dq_kernel`` runs one program per (query
  block, batch, head).
The oracle is ``kernels.ops.attention_reference`` (the model's XLA attention).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from open_r1_jax.kernels.adapter import interpreting, triton_call
from open_r1_jax.kernels.triton_common import ieee_flag, mma, pow2


class Blocks(NamedTuple):
    bm: int  # query rows a block
    bn: int  # key rows a block
    warps: int = 4
    stages: int = 2
    bwd_bm: int = 0  # backward blocks (0 = same as forward)
    bwd_bn: int = 0


def pick_blocks(t: int, k: int, dtype) -> Blocks:
    if interpreting():
        b = pow2(min(t, 128), hi=128)
        return Blocks(bm=b, bn=b, bwd_bm=b, bwd_bn=b)
    if jnp.dtype(dtype).itemsize <= 2:
        return Blocks(bm=128, bn=64, warps=8 if k > 64 else 4, stages=3, bwd_bm=64, bwd_bn=64)
    return Blocks(bm=64, bn=32, warps=4, stages=2, bwd_bm=32, bwd_bn=32)


@triton.jit
def flash_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    seg_ptr,
    T,
    H,
    G,
    K,
    sm_scale,
    o_ptr,
    lse_ptr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    m_ok = offs_m < T
    d_ok = offs_d < K
    b64 = b.to(tl.int64)
    q_base = q_ptr + b64 * T * H * K + h * K
    kv_off = b64 * T * G * K + g * K
    q = tl.load(q_base + offs_m[:, None] * (H * K) + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    seg_q = tl.load(seg_ptr + b64 * T + offs_m, mask=m_ok, other=-1)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BD), dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BM, T)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        n_ok = offs_n < T
        kt = tl.load(
            k_ptr + kv_off + offs_n[None, :] * (G * K) + offs_d[:, None], mask=d_ok[:, None] & n_ok[None, :], other=0.0
        )  # [BD,BN]
        s = mma(q, kt, tl.zeros((BM, BN), dtype=tl.float32), IEEE) * qk_scale
        seg_k = tl.load(seg_ptr + b64 * T + offs_n, mask=n_ok, other=-2)
        keep = (offs_m[:, None] >= offs_n[None, :]) & (seg_q[:, None] == seg_k[None, :]) & n_ok[None, :]
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + kv_off + offs_n[:, None] * (G * K) + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0
        )
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_base = o_ptr + b64 * T * H * K + h * K
    tl.store(
        o_base + offs_m[:, None] * (H * K) + offs_d[None, :],
        o.to(o_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    tl.store(lse_ptr + (b64 * H + h) * T + offs_m, lse, mask=m_ok)


@triton.jit
def flash_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    seg_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    T,
    H,
    G,
    K,
    sm_scale,
    dq_ptr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    m_ok = offs_m < T
    d_ok = offs_d < K
    md_mask = m_ok[:, None] & d_ok[None, :]
    b64 = b.to(tl.int64)
    q_idx = b64 * T * H * K + h * K + offs_m[:, None] * (H * K) + offs_d[None, :]
    kv_off = b64 * T * G * K + g * K
    q = tl.load(q_ptr + q_idx, mask=md_mask, other=0.0)
    do = tl.load(do_ptr + q_idx, mask=md_mask, other=0.0)
    row = (b64 * H + h) * T + offs_m
    lse2 = tl.load(lse_ptr + row, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + row, mask=m_ok, other=0.0)
    seg_q = tl.load(seg_ptr + b64 * T + offs_m, mask=m_ok, other=-1)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros((BM, BD), dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BM, T)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        n_ok = offs_n < T
        nd_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off + offs_n[:, None] * (G * K) + offs_d[None, :], mask=nd_mask, other=0.0)
        v = tl.load(v_ptr + kv_off + offs_n[:, None] * (G * K) + offs_d[None, :], mask=nd_mask, other=0.0)
        s = mma(q, tl.trans(k), tl.zeros((BM, BN), dtype=tl.float32), IEEE) * qk_scale
        seg_k = tl.load(seg_ptr + b64 * T + offs_n, mask=n_ok, other=-2)
        keep = (offs_m[:, None] >= offs_n[None, :]) & (seg_q[:, None] == seg_k[None, :]) & n_ok[None, :]
        p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
        dp = mma(do, tl.trans(v), tl.zeros((BM, BN), dtype=tl.float32), IEEE)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, IEEE)
    tl.store(dq_ptr + q_idx, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=md_mask)


@triton.jit
def flash_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    seg_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    T,
    H,
    G,
    K,
    sm_scale,
    dk_ptr,
    dv_ptr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = pid_bg // G
    g = pid_bg % G
    n_rep = H // G
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    n_ok = offs_n < T
    d_ok = offs_d < K
    nd_mask = n_ok[:, None] & d_ok[None, :]
    b64 = b.to(tl.int64)
    kv_idx = b64 * T * G * K + g * K + offs_n[:, None] * (G * K) + offs_d[None, :]
    k = tl.load(k_ptr + kv_idx, mask=nd_mask, other=0.0)
    v = tl.load(v_ptr + kv_idx, mask=nd_mask, other=0.0)
    seg_k = tl.load(seg_ptr + b64 * T + offs_n, mask=n_ok, other=-2)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros((BN, BD), dtype=tl.float32)
    dv = tl.zeros((BN, BD), dtype=tl.float32)
    lo = (pid_n * BN // BM) * BM  # first query block that can see this key block
    for r in range(0, n_rep):
        h = g * n_rep + r
        for start_m in range(lo, T, BM):
            offs_m = start_m + tl.arange(0, BM)
            m_ok = offs_m < T
            md_mask = m_ok[:, None] & d_ok[None, :]
            q_idx = b64 * T * H * K + h * K + offs_m[:, None] * (H * K) + offs_d[None, :]
            q = tl.load(q_ptr + q_idx, mask=md_mask, other=0.0)
            do = tl.load(do_ptr + q_idx, mask=md_mask, other=0.0)
            row = (b64 * H + h) * T + offs_m
            lse2 = tl.load(lse_ptr + row, mask=m_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(delta_ptr + row, mask=m_ok, other=0.0)
            seg_q = tl.load(seg_ptr + b64 * T + offs_m, mask=m_ok, other=-1)
            s = mma(q, tl.trans(k), tl.zeros((BM, BN), dtype=tl.float32), IEEE) * qk_scale  # [BM,BN]
            keep = (offs_m[:, None] >= offs_n[None, :]) & (seg_q[:, None] == seg_k[None, :]) & m_ok[:, None]
            p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
            dv = mma(tl.trans(p.to(do.dtype)), do, dv, IEEE)
            dp = mma(do, tl.trans(v), tl.zeros((BM, BN), dtype=tl.float32), IEEE)
            ds = p * (dp - delta[:, None])
            dk = mma(tl.trans(ds.to(q.dtype)), q, dk, IEEE)
    tl.store(dk_ptr + kv_idx, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=nd_mask)
    tl.store(dv_ptr + kv_idx, dv.to(dv_ptr.dtype.element_ty), mask=nd_mask)


# ----------------------------------------------------------------------------- launchers and the op


def _dims(q, k):
    b, t, h, kd = q.shape
    return b, t, h, k.shape[2], kd


def flash_forward(q, k, v, segment_ids, blocks: Blocks):
    """-> (o [B,T,H,K] in q's dtype, lse [B,H,T] fp32)."""
    b, t, h, g, kd = _dims(q, k)
    return triton_call(
        q,
        k,
        v,
        segment_ids,
        t,
        h,
        g,
        kd,
        float(kd**-0.5),
        kernel=flash_fwd_kernel,
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
        grid=(triton.cdiv(t, blocks.bm), b * h),
        num_warps=blocks.warps,
        num_stages=blocks.stages,
        BM=blocks.bm,
        BN=blocks.bn,
        BD=pow2(kd),
        IEEE=ieee_flag(q.dtype),
    )


def flash_backward(q, k, v, segment_ids, o, lse, do, blocks: Blocks):
    """-> (dq, dk, dv) in the dtypes of q, k, v."""
    b, t, h, g, kd = _dims(q, k)
    do = do.astype(q.dtype)
    delta = jnp.einsum("bthk,bthk->bht", o.astype(jnp.float32), do.astype(jnp.float32))  # [B,H,T]
    bm, bn = blocks.bwd_bm or blocks.bm, blocks.bwd_bn or blocks.bn
    common = dict(num_warps=blocks.warps, num_stages=blocks.stages, BM=bm, BN=bn, BD=pow2(kd), IEEE=ieee_flag(q.dtype))
    args = (q, k, v, segment_ids, do, lse, delta, t, h, g, kd, float(kd**-0.5))
    dq = triton_call(
        *args,
        kernel=flash_bwd_dq_kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(triton.cdiv(t, bm), b * h),
        **common,
    )
    dk, dv = triton_call(
        *args,
        kernel=flash_bwd_dkdv_kernel,
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=(triton.cdiv(t, bn), b * g),
        **common,
    )
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, segment_ids, blocks):
    return flash_forward(q, k, v, segment_ids, blocks)[0]


def _flash_fwd(q, k, v, segment_ids, blocks):
    o, lse = flash_forward(q, k, v, segment_ids, blocks)
    return o, (q, k, v, segment_ids, o, lse)


def _flash_bwd(blocks, res, do):
    q, k, v, segment_ids, o, lse = res
    return (*flash_backward(q, k, v, segment_ids, o, lse, do, blocks), None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, segment_ids, blocks: Blocks | None = None):
    """q [B,T,H,K], k/v [B,T,G,K], segment_ids [B,T] int -> [B,T,H,K] (causal, segment-masked)."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    blocks = blocks or pick_blocks(q.shape[1], q.shape[3], q.dtype)
    v = v.astype(q.dtype)
    return _flash(q, k.astype(q.dtype), v, segment_ids.astype(jnp.int32), blocks)
