"""Grouped (ragged) matmul for dropless MoE over rows sorted by expert, in Triton (MegaBlocks-style).

Legend: R rows (token, slot pairs sorted by expert), E experts, K contraction width, N output width,
BM/BN/BK block sides, NT row tiles.

    y[r] = x[r] @ w[e(r)]          x [R,K], w [E,K,N], group_sizes [E] -> y [R,N]

Row tiles never straddle two experts: each expert's rows are cut into ceil(g_e / BM) tiles (the last
one partial, masked), and a static bound NT = ceil(R / BM) + E + 1 covers any split. Rows after
sum(group_sizes) form one more group whose output is zero (``jax.lax.ragged_dot`` semantics); unused
tail tiles are empty. An expert with no rows gets no tile in the forward pass and a zero gradient.

Kernels (all accumulate in fp32):
- ``gmm_kernel``: forward, and dX = dY @ w[e]^T through w's strides; optional per-row scale in the
  epilogue (the routing weight) and an optional second product summed into the same tile.
- ``gmm_dw_kernel``: dW[e] = x_e^T @ (s * dY)_e, one program per (expert, K block, N block), looping
  over the expert's rows; an empty expert writes zeros.
The oracle is ``kernels.ops.grouped_matmul_reference``.
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
    bm: int  # rows of a tile (forward/dX), rows per step of the dW loop
    bn: int  # output columns of a tile
    bk: int  # contraction step (forward/dX), K side of a dW tile
    warps: int = 4
    stages: int = 2


def pick_blocks(rows: int, k: int, n: int, dtype) -> Blocks:
    """Large blocks under the interpreter (its cost is per program and step); GPU tiles otherwise."""
    if interpreting():
        return Blocks(bm=pow2(min(rows, 128), hi=128), bn=pow2(n, hi=128), bk=pow2(k, hi=128))
    if jnp.dtype(dtype).itemsize <= 2:
        return Blocks(bm=64, bn=pow2(n, hi=128), bk=pow2(k, hi=64), warps=4, stages=3)
    return Blocks(bm=64, bn=pow2(n, hi=64), bk=pow2(k, hi=32), warps=4, stages=2)


# ----------------------------------------------------------------------------- tile schedule (jnp)


def tile_schedule(group_sizes: jax.Array, rows: int, bm: int) -> jax.Array:
    """-> int32 [3, NT]: expert (E = the zero group / an empty tile), first row, end row of each tile."""
    n_experts = group_sizes.shape[0]
    gs = group_sizes.astype(jnp.int32)
    sizes = jnp.concatenate([gs, jnp.maximum(rows - jnp.sum(gs), 0)[None]])  # [E+1]
    tiles = (sizes + bm - 1) // bm
    tile_end = jnp.cumsum(tiles)
    group_start = jnp.cumsum(sizes) - sizes
    n_tiles = -(-rows // bm) + n_experts + 1
    t = jnp.arange(n_tiles, dtype=jnp.int32)
    grp = jnp.minimum(jnp.searchsorted(tile_end, t, side="right"), n_experts).astype(jnp.int32)
    start = group_start[grp] + (t - (tile_end[grp] - tiles[grp])) * bm
    end = jnp.minimum(start + bm, group_start[grp] + sizes[grp])
    used = t < tile_end[-1]
    return jnp.stack([jnp.where(used, grp, n_experts), jnp.where(used, start, 0), jnp.where(used, end, 0)])


def group_offsets(group_sizes: jax.Array) -> jax.Array:
    """[E] sizes -> int32 [E+1] row offsets of the groups."""
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(group_sizes.astype(jnp.int32))])


# ----------------------------------------------------------------------------- kernels


@triton.jit
def tile_rows(meta_ptr, n_tiles, BM: tl.constexpr):
    """The rows of this program's tile (axis 0) in the ``tile_schedule`` layout [expert, start, end]:
    -> (expert, row indices as int64, row mask)."""
    tile = tl.program_id(0)
    e = tl.load(meta_ptr + tile)
    start = tl.load(meta_ptr + n_tiles + tile)
    end = tl.load(meta_ptr + 2 * n_tiles + tile)
    rows = start + tl.arange(0, BM)
    return e, rows.to(tl.int64), rows < end


@triton.jit
def gmm_kernel(
    x_ptr,
    w_ptr,
    meta_ptr,
    scale_ptr,
    x2_ptr,
    w2_ptr,
    n_tiles,
    n_experts,
    K,
    N,
    s_we,
    s_wk,
    s_wn,
    y_ptr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SECOND: tl.constexpr,
    IEEE: tl.constexpr,
):
    """y[r, n] = s[r] * (sum_k x[r,k] w[e,k,n] (+ sum_k x2[r,k] w2[e,k,n])); w addressed by strides."""
    pid_n = tl.program_id(1)
    e, rows64, row_ok = tile_rows(meta_ptr, n_tiles, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    n_k = tl.where(e < n_experts, tl.cdiv(K, BK), 0)  # the zero group and empty tiles skip the loop
    w_off = e.to(tl.int64) * s_we
    for kk in range(0, n_k):
        ks = kk * BK + tl.arange(0, BK)
        k_ok = ks < K
        a_mask = row_ok[:, None] & k_ok[None, :]
        b_off = w_off + ks[:, None] * s_wk + cols[None, :] * s_wn
        b_mask = k_ok[:, None] & col_ok[None, :]
        a = tl.load(x_ptr + rows64[:, None] * K + ks[None, :], mask=a_mask, other=0.0)
        b = tl.load(w_ptr + b_off, mask=b_mask, other=0.0)
        acc = mma(a, b, acc, IEEE)
        if HAS_SECOND:
            a2 = tl.load(x2_ptr + rows64[:, None] * K + ks[None, :], mask=a_mask, other=0.0)
            b2 = tl.load(w2_ptr + b_off, mask=b_mask, other=0.0)
            acc = mma(a2, b2, acc, IEEE)
    if HAS_SCALE:
        s = tl.load(scale_ptr + rows64, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * s[:, None]
    y_mask = row_ok[:, None] & col_ok[None, :]
    tl.store(y_ptr + rows64[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def gmm_dw_kernel(
    x_ptr,
    dy_ptr,
    offsets_ptr,
    scale_ptr,
    K,
    N,
    dw_ptr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BN: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    IEEE: tl.constexpr,
):
    """dw[e, k, n] = sum over rows r of group e of x[r,k] * s[r] * dy[r,n]."""
    e = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n = tl.program_id(2)
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    ks = pid_k * BK + tl.arange(0, BK)
    k_ok = ks < K
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < N
    acc = tl.zeros((BK, BN), dtype=tl.float32)
    for m0 in range(start, end, BM):
        rows = m0 + tl.arange(0, BM)
        row_ok = rows < end
        rows64 = rows.to(tl.int64)
        xt = tl.load(
            x_ptr + rows64[None, :] * K + ks[:, None], mask=k_ok[:, None] & row_ok[None, :], other=0.0
        )  # [BK,BM]
        d = tl.load(
            dy_ptr + rows64[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        )  # [BM,BN]
        if HAS_SCALE:
            s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            d = (d.to(tl.float32) * s[:, None]).to(dy_ptr.dtype.element_ty)
        acc = mma(xt, d, acc, IEEE)
    out = dw_ptr + e.to(tl.int64) * K * N + ks[:, None] * N + cols[None, :]
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------- launchers


def gmm(x, w, meta, blocks: Blocks, *, transpose_w: bool = False, scale=None, second=None, out_dtype=None):
    """Forward/dX launcher. x [R,K]; w [E,K,N] (or [E,N,K] with transpose_w: y = x @ w[e]^T).
    meta: ``tile_schedule(group_sizes, R, blocks.bm)``; scale [R] or None; second (x2, w2) like (x, w)."""
    rows, k = x.shape
    n_experts = w.shape[0]
    if transpose_w:
        n = w.shape[1]
        s_we, s_wk, s_wn = w.shape[1] * w.shape[2], 1, w.shape[2]
    else:
        n = w.shape[2]
        s_we, s_wk, s_wn = w.shape[1] * w.shape[2], w.shape[2], 1
    n_tiles = meta.shape[1]
    x2, w2 = second if second is not None else (x, w)
    return triton_call(
        x,
        w,
        meta,
        scale if scale is not None else x,
        x2,
        w2,
        n_tiles,
        n_experts,
        k,
        n,
        s_we,
        s_wk,
        s_wn,
        kernel=gmm_kernel,
        out_shape=jax.ShapeDtypeStruct((rows, n), out_dtype or x.dtype),
        grid=(n_tiles, triton.cdiv(n, blocks.bn)),
        num_warps=blocks.warps,
        num_stages=blocks.stages,
        BM=blocks.bm,
        BN=blocks.bn,
        BK=blocks.bk,
        HAS_SCALE=int(scale is not None),
        HAS_SECOND=int(second is not None),
        IEEE=ieee_flag(x.dtype),
    )


def gmm_dw(x, dy, offsets, n_experts: int, blocks: Blocks, *, scale=None, out_dtype=None):
    """dW launcher: x [R,K], dy [R,N], offsets [E+1] -> [E,K,N]; tiles of blocks.bk x blocks.bn,
    blocks.bm rows a step (``pick_blocks(R, K, N, dtype)`` fits)."""
    k, n = x.shape[1], dy.shape[1]
    bk, bn = blocks.bk, blocks.bn
    return triton_call(
        x,
        dy,
        offsets,
        scale if scale is not None else x,
        k,
        n,
        kernel=gmm_dw_kernel,
        out_shape=jax.ShapeDtypeStruct((n_experts, k, n), out_dtype or x.dtype),
        grid=(n_experts, triton.cdiv(k, bk), triton.cdiv(n, bn)),
        num_warps=blocks.warps,
        num_stages=blocks.stages,
        BM=blocks.bm,
        BK=bk,
        BN=bn,
        HAS_SCALE=int(scale is not None),
        IEEE=ieee_flag(x.dtype),
    )


# ----------------------------------------------------------------------------- the differentiable op


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gmm(x, w, group_sizes, blocks: Blocks):
    return gmm(x, w, tile_schedule(group_sizes, x.shape[0], blocks.bm), blocks)


def _gmm_fwd(x, w, group_sizes, blocks):
    meta = tile_schedule(group_sizes, x.shape[0], blocks.bm)
    return gmm(x, w, meta, blocks), (x, w, group_sizes, meta)


def _gmm_bwd(blocks, res, dy):
    x, w, group_sizes, meta = res
    dy = dy.astype(x.dtype)
    rows, k, n = x.shape[0], w.shape[1], w.shape[2]
    dx_blocks = pick_blocks(rows, n, k, x.dtype)._replace(bm=blocks.bm)  # contracts over N, meta's bm
    dx = gmm(dy, w, meta, dx_blocks, transpose_w=True)
    dw = gmm_dw(x, dy, group_offsets(group_sizes), w.shape[0], pick_blocks(rows, k, n, x.dtype), out_dtype=w.dtype)
    return dx, dw, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, blocks: Blocks | None = None):
    """x [R,K] rows sorted by expert, w [E,K,N], group_sizes [E] int -> [R,N] (differentiable)."""
    blocks = blocks or pick_blocks(x.shape[0], x.shape[1], w.shape[2], x.dtype)
    return _gmm(x, w.astype(x.dtype), group_sizes, blocks)
