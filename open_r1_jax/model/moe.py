"""Mixture-of-experts feed-forward layers: the seed's dense DRN and the sparse top-k MoE.

Legend: B batch, T time, N = B*T tokens, D model width, E experts, A active experts per token,
F expert hidden width, R = N*A routed rows, NB blocks of the blocked grouped matmul, Bk rows a block.

Dispatch of the sparse layer (``moe.dispatch``):
- ``dense``: every expert runs on every token and the outputs are mixed by the (mostly zero) routing
  weights. Exact and simple: the oracle.
- ``dropless``: flatten (token, slot) pairs, stable-sort by expert, gather rows, grouped matmul per
  expert, multiply by the routing weight, scatter-add back to token order. No token is dropped. The
  grouped matmul is ``jax.lax.ragged_dot`` or a *blocked* form (``moe.grouped_impl``): every expert's
  rows are padded to a multiple of the block size, so each block belongs to one expert and a batched
  einsum over blocks does the work with static shapes (as in MegaBlocks). On CPU XLA expands
  ``ragged_dot`` into dense work over all experts; the blocked form measured 3-8x faster there
  (benchmarks/moe_dispatch.py), so ``auto`` picks ``ragged_dot`` on GPU and ``blocked`` elsewhere.
  With ``model.kernels`` resolved to ``triton`` the whole grouped SwiGLU, routing weight included, is
  ``kernels.ops.grouped_swiglu`` (fused Triton kernels) instead, whatever ``grouped_impl`` says.

A call whose tokens x experts is at most ``moe.dense_token_experts`` (a decode step of a few
sequences) runs the dense dispatch whatever ``dispatch`` says: the blocked form pads to at least one
block per expert and gathers each block's weights, so with few tokens it does more work than every
expert on every token. Forward, width 128, top-2 (``benchmarks/moe_dispatch.py --decode``): 8 experts,
1 token 0.53 -> 0.15 ms, 64 tokens 0.95 -> 0.59; 64 experts, 4 tokens 1.79 -> 0.57, but 64 tokens
2.63 -> 2.73 (dense loses from there). The choice is static: shapes are known at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import DRNConfig, MoEConfig
from open_r1_jax.kernels import ops
from open_r1_jax.model import routing
from open_r1_jax.model.layers import RouterBias, SwiGLU, gated_hidden, param, swiglu
from open_r1_jax.parallel.experts import expert_parallel_ffn


def _cdiv(a, b):
    return (a + b - 1) // b


def pick_block_size(rows: int, n_experts: int) -> int:
    """Largest power of two <= rows / (2E), clipped to [8, 128]: padding stays below ~50%."""
    target = max(rows // (2 * n_experts), 8)
    return min(1 << (target.bit_length() - 1), 128)


def blocked_grouped_swiglu(x_sorted, experts_sorted, group_sizes, w_gate, w_up, w_down, block: int):
    """SwiGLU of each row with its expert's weights; rows sorted by expert. [R,D] -> [R,D]."""
    rows, d = x_sorted.shape
    n_experts = w_gate.shape[0]
    n_blocks = _cdiv(rows, block) + n_experts  # static bound on sum_e ceil(g_e / Bk)
    padded = _cdiv(group_sizes, block) * block  # [E]
    padded_end = jnp.cumsum(padded)
    group_start = jnp.cumsum(group_sizes) - group_sizes
    dest = (padded_end - padded)[experts_sorted] + jnp.arange(rows) - group_start[experts_sorted]  # [R]
    block_expert = jnp.searchsorted(padded_end, jnp.arange(n_blocks) * block, side="right")
    block_expert = jnp.minimum(block_expert, n_experts - 1)  # unused tail blocks hold zeros
    xp = jnp.zeros((n_blocks * block, d), x_sorted.dtype).at[dest].set(x_sorted)
    xp = xp.reshape(n_blocks, block, d)
    g = jnp.einsum("nbd,ndf->nbf", xp, w_gate[block_expert])
    u = jnp.einsum("nbd,ndf->nbf", xp, w_up[block_expert])
    y = jnp.einsum("nbf,nfd->nbd", jax.nn.silu(g) * u, w_down[block_expert])
    return y.reshape(n_blocks * block, d)[dest]


def ragged_grouped_swiglu(x_sorted, group_sizes, w_gate, w_up, w_down):
    g = jax.lax.ragged_dot(x_sorted, w_gate, group_sizes)
    u = jax.lax.ragged_dot(x_sorted, w_up, group_sizes)
    return jax.lax.ragged_dot(jax.nn.silu(g) * u, w_down, group_sizes)


def dropless_experts(
    x, experts, weights, w_gate, w_up, w_down, impl: str = "auto", block: int = 0, kernels: str = "xla"
):
    """x [N,D], experts/weights [N,A] -> [N,D] = sum_a weights[:,a] * expert_{experts[:,a]}(x).
    kernels: the resolved ``model.kernels`` ("triton" runs the fused Triton grouped SwiGLU)."""
    n, a = experts.shape
    n_experts = w_gate.shape[0]
    flat = experts.reshape(-1)  # [R]
    order = jnp.argsort(flat, stable=True)
    token = order // a  # token of each sorted row
    experts_sorted = flat[order]
    group_sizes = jnp.bincount(flat, length=n_experts).astype(jnp.int32)
    x_sorted = x[token]
    if kernels == "triton":
        y = ops.grouped_swiglu(x_sorted, group_sizes, w_gate, w_up, w_down, weights.reshape(-1)[order], impl="triton")
        return jnp.zeros((n, x.shape[1]), y.dtype).at[token].add(y)
    if impl == "auto":
        impl = "ragged_dot" if jax.default_backend() == "gpu" else "blocked"
    if impl == "ragged_dot":
        y = ragged_grouped_swiglu(x_sorted, group_sizes, w_gate, w_up, w_down)
    else:
        block = block or pick_block_size(n * a, n_experts)
        y = blocked_grouped_swiglu(x_sorted, experts_sorted, group_sizes, w_gate, w_up, w_down, block)
    y = y * weights.reshape(-1)[order][:, None].astype(y.dtype)
    return jnp.zeros((n, x.shape[1]), y.dtype).at[token].add(y)


FEW_TOKENS = 16  # at most this many tokens: dense_experts batches over experts (see there)


def dense_experts(x, combine, w_gate, w_up, w_down):
    """x [N,D], combine [N,E] routing weights (zero where not routed) -> [N,D]. Runs every expert.

    With few tokens (decoding), x is broadcast to every expert and the matmuls are batched over E:
    the [N,D] x [E,D,F] form makes XLA:CPU copy each weight into a [D,E*F] layout on every call,
    which costs more than the matmul itself at N = 1 (8 experts, width 256: 0.38 -> 0.17 ms). From
    about 64 tokens the copy is amortised and the batched form is slower (1.1 -> 1.5 ms).

    With more tokens the experts are one SwiGLU of width E*F: the weights laid side by side as
    [D,E*F] (gate and up in one matmul) and [E*F,D], each token's hidden units scaled by its routing
    weight for their expert. The [N,E,F] einsum form made XLA:CPU's backward of the silu a layout
    copy that took a fifth of the multimodal demo's step (benchmarks/profile_step.py); this form is
    1.3-1.7x faster forward and backward at N = 768-4096 (E = 2-8)."""
    if x.shape[0] <= FEW_TOKENS:
        xe = jnp.broadcast_to(x, (w_gate.shape[0],) + x.shape)  # [E,N,D]
        g = jnp.einsum("end,edf->enf", xe, w_gate)
        u = jnp.einsum("end,edf->enf", xe, w_up)
        h = jax.nn.silu(g) * u * combine.T[:, :, None].astype(x.dtype)
        return jnp.einsum("enf,efd->nd", h, w_down)
    (n, d), (e, _, f) = x.shape, w_gate.shape
    side_by_side = lambda w: w.transpose(1, 0, 2).reshape(d, e * f)  # [E,D,F] -> [D,E*F]
    h = gated_hidden(x, side_by_side(w_gate), side_by_side(w_up))  # [N,EF]
    h = h.reshape(n, e, f) * combine[:, :, None].astype(x.dtype)
    return h.reshape(n, e * f) @ w_down.reshape(e * f, d)


class ExpertWeights(nnx.Module):
    """E stacked SwiGLU experts: w_gate/w_up [E,D,F], w_down [E,F,D]."""

    def __init__(self, n_experts: int, d_model: int, ffn_dim: int, std: float, rngs: nnx.Rngs):
        self.w_gate = param(rngs, (n_experts, d_model, ffn_dim), ("experts", "embed", "mlp"), std)
        self.w_up = param(rngs, (n_experts, d_model, ffn_dim), ("experts", "embed", "mlp"), std)
        self.w_down = param(rngs, (n_experts, ffn_dim, d_model), ("experts", "mlp", "embed"), std)

    def cast(self, dtype):
        return tuple(p[...].astype(dtype) for p in (self.w_gate, self.w_up, self.w_down))


class DRNFeedForward(nnx.Module):
    """The seed's dynamic routing network: out = sum_e softmax(gate(x))_e * expert_e(x), all experts."""

    def __init__(self, d_model: int, cfg: DRNConfig, std: float, dtype, rngs: nnx.Rngs):
        self.router = param(rngs, (d_model, cfg.n_experts), ("embed", None), std)
        self.experts = ExpertWeights(cfg.n_experts, d_model, cfg.expert_ffn_dim, std, rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array):
        b, t, d = x.shape
        if self.experts.w_gate.shape[0] == 1:  # softmax over one expert is exactly 1: a plain SwiGLU
            return swiglu(x, *(w[0] for w in self.experts.cast(self.dtype))), {}
        probs = jax.nn.softmax(x.astype(jnp.float32) @ self.router[...], axis=-1)  # [B,T,E]
        out = dense_experts(x.reshape(b * t, d), probs.reshape(b * t, -1), *self.experts.cast(self.dtype))
        return out.reshape(b, t, d), {}


class MoEFeedForward(nnx.Module):
    """Sparse top-k routed experts (+ optional shared experts) with auxiliary losses and load stats."""

    def __init__(
        self,
        d_model: int,
        cfg: MoEConfig,
        std: float,
        dtype,
        rngs: nnx.Rngs,
        kernels: str = "xla",
        expert_parallel: int = 1,
    ):
        self.cfg, self.dtype = cfg, dtype
        self.kernels = kernels  # resolved model.kernels: "triton" or "xla"
        self.expert_parallel = expert_parallel  # size of the mesh's expert axis (given, never read from a mesh)
        self.router = param(rngs, (d_model, cfg.n_experts), ("embed", None), std)
        if cfg.router == "sigmoid":
            self.router_bias = RouterBias(jnp.zeros((cfg.n_experts,), jnp.float32), axes=(None,))
        self.experts = ExpertWeights(cfg.n_experts, d_model, cfg.expert_ffn_dim, std, rngs)
        if cfg.n_shared_experts:
            self.shared = SwiGLU(d_model, cfg.n_shared_experts * cfg.expert_ffn_dim, std, dtype, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array):
        """x [B,T,D], mask [B,T] (1 = real token) -> (out [B,T,D], aux dict)."""
        cfg = self.cfg
        b, t, d = x.shape
        logits = x.astype(jnp.float32) @ self.router[...]  # [B,T,E]
        if cfg.router == "sigmoid":
            weights, experts, probs = routing.topk_sigmoid_bias(
                logits, self.router_bias[...], cfg.top_k, cfg.renormalize
            )
        else:
            weights, experts, probs = routing.topk_softmax(logits, cfg.top_k, cfg.renormalize)
        weights = weights * cfg.route_scale
        aux = routing.aux_losses(logits, probs, experts, mask, cfg.top_k)
        aux["expert_ids"] = experts
        aux["dropped"] = jnp.zeros((), jnp.int32)  # (token, slot) rows dropped by a capacity limit
        xf, w = x.reshape(b * t, d), self.experts.cast(self.dtype)
        small = b * t * cfg.n_experts <= cfg.dense_token_experts and self.expert_parallel == 1
        if cfg.dispatch == "dense" or small:
            combine = jnp.sum(jax.nn.one_hot(experts, cfg.n_experts) * weights[..., None], axis=-2)
            out = dense_experts(xf, combine.reshape(b * t, -1), *w)
        else:
            grouped = functools.partial(
                dropless_experts, impl=cfg.grouped_impl, block=cfg.block_size, kernels=self.kernels
            )
            args = (xf, experts.reshape(b * t, -1), weights.reshape(b * t, -1), *w)
            if self.expert_parallel > 1:  # experts sharded over the mesh: token exchange in shard_map
                out, aux["dropped"] = expert_parallel_ffn(
                    *args, ep=self.expert_parallel, capacity_factor=cfg.capacity_factor, grouped=grouped
                )
            else:
                out = grouped(*args)
        out = out.reshape(b, t, d)
        if cfg.n_shared_experts:
            out = out + self.shared(x)
        return out, aux
