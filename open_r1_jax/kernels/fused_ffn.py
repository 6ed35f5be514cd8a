"""Fused SwiGLU expert FFN over rows sorted by expert (dropless MoE), in Triton.

Legend: R rows sorted by expert, E experts, D model width, F expert hidden width, BM/BF/BD blocks.

    h[r] = silu(x[r] @ wg[e]) * (x[r] @ wu[e])        one kernel: both products share the loads of x,
                                                      SiLU(gate) * up in the epilogue     [R,F]
    y[r] = s[r] * (h[r] @ wd[e])                      grouped matmul, routing weight s in the epilogue

Backward (all Triton but one row sum):
- ``ffn_bwd_kernel`` recomputes the gate and up products per [BM,BF] tile, computes G = dy @ wd[e]^T in
  the same loop over D, and writes dA = s*G*up*silu'(gate), dB = s*G*silu(gate), h, and the partial
  row sums of G*h over the tile's F block (ds = sum_f G*h, summed over blocks in jnp).
- dx = dA @ wg^T + dB @ wu^T (one grouped kernel, two products), dwg = x^T dA, dwu = x^T dB,
  dwd = h^T (s*dy): grouped dW kernels.
No [R,F] activation is saved between forward and backward: h is recomputed.
The tiling (row tiles within one expert, the zero group) is ``kernels.grouped_matmul``'s.
The oracle is ``kernels.ops.grouped_swiglu_reference``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from open_r1_jax.kernels.adapter import interpreting, triton_call
from open_r1_jax.kernels.grouped_matmul import Blocks, gmm, gmm_dw, group_offsets, pick_blocks, tile_rows, tile_schedule
from open_r1_jax.kernels.triton_common import ieee_flag, mma


@triton.jit
def ffn_gate_up_kernel(
    x_ptr,
    wg_ptr,
    wu_ptr,
    meta_ptr,
    n_tiles,
    n_experts,
    D,
    F,
    h_ptr,
    BM: tl.constexpr,
    BF: tl.constexpr,
    BD: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_f = tl.program_id(1)
    e, rows64, row_ok = tile_rows(meta_ptr, n_tiles, BM)
    fs = pid_f * BF + tl.arange(0, BF)
    f_ok = fs < F
    gate = tl.zeros((BM, BF), dtype=tl.float32)
    up = tl.zeros((BM, BF), dtype=tl.float32)
    n_d = tl.where(e < n_experts, tl.cdiv(D, BD), 0)
    w_off = e.to(tl.int64) * D * F
    for dd in range(0, n_d):
        ds = dd * BD + tl.arange(0, BD)
        d_ok = ds < D
        a = tl.load(x_ptr + rows64[:, None] * D + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w_idx = w_off + ds[:, None] * F + fs[None, :]
        w_mask = d_ok[:, None] & f_ok[None, :]
        gate = mma(a, tl.load(wg_ptr + w_idx, mask=w_mask, other=0.0), gate, IEEE)
        up = mma(a, tl.load(wu_ptr + w_idx, mask=w_mask, other=0.0), up, IEEE)
    h = gate * tl.sigmoid(gate) * up
    tl.store(
        h_ptr + rows64[:, None] * F + fs[None, :], h.to(h_ptr.dtype.element_ty), mask=row_ok[:, None] & f_ok[None, :]
    )


@triton.jit
def ffn_bwd_kernel(
    x_ptr,
    wg_ptr,
    wu_ptr,
    wd_ptr,
    dy_ptr,
    scale_ptr,
    meta_ptr,
    n_tiles,
    n_experts,
    D,
    F,
    da_ptr,
    db_ptr,
    h_ptr,
    dsp_ptr,
    BM: tl.constexpr,
    BF: tl.constexpr,
    BD: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_f = tl.program_id(1)
    n_fb = tl.num_programs(1)
    e, rows64, row_ok = tile_rows(meta_ptr, n_tiles, BM)
    fs = pid_f * BF + tl.arange(0, BF)
    f_ok = fs < F
    gate = tl.zeros((BM, BF), dtype=tl.float32)
    up = tl.zeros((BM, BF), dtype=tl.float32)
    g = tl.zeros((BM, BF), dtype=tl.float32)  # dy @ wd[e]^T
    n_d = tl.where(e < n_experts, tl.cdiv(D, BD), 0)
    w_off = e.to(tl.int64) * D * F
    for dd in range(0, n_d):
        ds = dd * BD + tl.arange(0, BD)
        d_ok = ds < D
        a_mask = row_ok[:, None] & d_ok[None, :]
        a = tl.load(x_ptr + rows64[:, None] * D + ds[None, :], mask=a_mask, other=0.0)
        dy = tl.load(dy_ptr + rows64[:, None] * D + ds[None, :], mask=a_mask, other=0.0)
        w_mask = d_ok[:, None] & f_ok[None, :]
        w_idx = w_off + ds[:, None] * F + fs[None, :]  # wg/wu [E,D,F] as [BD,BF]
        gate = mma(a, tl.load(wg_ptr + w_idx, mask=w_mask, other=0.0), gate, IEEE)
        up = mma(a, tl.load(wu_ptr + w_idx, mask=w_mask, other=0.0), up, IEEE)
        wd_t = tl.load(wd_ptr + w_off + fs[None, :] * D + ds[:, None], mask=w_mask, other=0.0)  # wd [E,F,D]^T
        g = mma(dy, wd_t, g, IEEE)
    s = tl.load(scale_ptr + rows64, mask=row_ok, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    silu = gate * sig
    h = silu * up
    dh = g * s[:, None]
    da = dh * up * sig * (1.0 + gate * (1.0 - sig))
    db = dh * silu
    out = rows64[:, None] * F + fs[None, :]
    mask = row_ok[:, None] & f_ok[None, :]
    tl.store(da_ptr + out, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + out, db.to(db_ptr.dtype.element_ty), mask=mask)
    tl.store(h_ptr + out, h.to(h_ptr.dtype.element_ty), mask=mask)
    tl.store(dsp_ptr + rows64 * n_fb + pid_f, tl.sum(g * h, axis=1), mask=row_ok)


def _ffn_blocks(rows: int, d: int, f: int, dtype) -> Blocks:
    """Tiles [BM, BF] over (rows, F), contraction BD over D. On a GPU BF stays at 64: the backward
    holds three [BM, BF] fp32 accumulators (gate, up, dy @ wd^T) and loads five operand tiles."""
    b = pick_blocks(rows, d, f, dtype)
    return b if interpreting() else b._replace(bn=min(b.bn, 64))


def gate_up(x, wg, wu, meta, blocks: Blocks):
    rows, d = x.shape
    n_experts, _, f = wg.shape
    n_tiles = meta.shape[1]
    return triton_call(
        x,
        wg,
        wu,
        meta,
        n_tiles,
        n_experts,
        d,
        f,
        kernel=ffn_gate_up_kernel,
        out_shape=jax.ShapeDtypeStruct((rows, f), x.dtype),
        grid=(n_tiles, triton.cdiv(f, blocks.bn)),
        num_warps=blocks.warps,
        num_stages=blocks.stages,
        BM=blocks.bm,
        BF=blocks.bn,
        BD=blocks.bk,
        IEEE=ieee_flag(x.dtype),
    )


def _forward(x, group_sizes, wg, wu, wd, scale, blocks):
    rows, d = x.shape
    meta = tile_schedule(group_sizes, rows, blocks.bm)
    h = gate_up(x, wg, wu, meta, blocks)
    down_blocks = pick_blocks(rows, wd.shape[1], d, x.dtype)._replace(bm=blocks.bm)
    return gmm(h, wd, meta, down_blocks, scale=scale), meta


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _ffn(x, group_sizes, wg, wu, wd, scale, blocks):
    return _forward(x, group_sizes, wg, wu, wd, scale, blocks)[0]


def _ffn_fwd(x, group_sizes, wg, wu, wd, scale, blocks):
    y, meta = _forward(x, group_sizes, wg, wu, wd, scale, blocks)
    return y, (x, group_sizes, wg, wu, wd, scale, meta)


def _ffn_bwd(blocks, res, dy):
    x, group_sizes, wg, wu, wd, scale, meta = res
    rows, d = x.shape
    n_experts, _, f = wg.shape
    n_tiles = meta.shape[1]
    dy = dy.astype(x.dtype)
    n_fb = triton.cdiv(f, blocks.bn)
    act = jax.ShapeDtypeStruct((rows, f), x.dtype)
    da, db, h, ds_part = triton_call(
        x,
        wg,
        wu,
        wd,
        dy,
        scale,
        meta,
        n_tiles,
        n_experts,
        d,
        f,
        kernel=ffn_bwd_kernel,
        out_shape=(act, act, act, jax.ShapeDtypeStruct((rows, n_fb), jnp.float32)),
        grid=(n_tiles, n_fb),
        num_warps=blocks.warps,
        num_stages=blocks.stages,
        BM=blocks.bm,
        BF=blocks.bn,
        BD=blocks.bk,
        IEEE=ieee_flag(x.dtype),
    )
    dx_blocks = pick_blocks(rows, f, d, x.dtype)._replace(bm=blocks.bm)
    dx = gmm(da, wg, meta, dx_blocks, transpose_w=True, second=(db, wu))
    offsets = group_offsets(group_sizes)
    dw_in = pick_blocks(rows, d, f, x.dtype)
    dwg = gmm_dw(x, da, offsets, n_experts, dw_in, out_dtype=wg.dtype)
    dwu = gmm_dw(x, db, offsets, n_experts, dw_in, out_dtype=wu.dtype)
    dwd = gmm_dw(h, dy, offsets, n_experts, pick_blocks(rows, f, d, x.dtype), scale=scale, out_dtype=wd.dtype)
    dscale = jnp.sum(ds_part, axis=1).astype(scale.dtype)
    return dx, None, dwg, dwu, dwd, dscale


_ffn.defvjp(_ffn_fwd, _ffn_bwd)


def grouped_swiglu(x, group_sizes, w_gate, w_up, w_down, row_scale=None, blocks: Blocks | None = None):
    """x [R,D] rows sorted by expert, group_sizes [E], w_gate/w_up [E,D,F], w_down [E,F,D], row_scale [R]
    (routing weights; None = 1) -> [R,D] = row_scale * swiglu_e(x). Differentiable in all but sizes."""
    rows, d = x.shape
    blocks = blocks or _ffn_blocks(rows, d, w_gate.shape[2], x.dtype)
    if row_scale is None:
        row_scale = jnp.ones((rows,), jnp.float32)
    c = lambda w: w.astype(x.dtype)
    return _ffn(x, group_sizes, c(w_gate), c(w_up), c(w_down), row_scale, blocks)
