"""Forward+backward time of one FFN layer: the seed's dense routing (DRN, every expert on every token)
versus sparse ``dropless`` top-2 dispatch, for 8, 32 and 64 experts at a fixed token count and expert
size, measured side by side in one run. Also the ``dense`` dispatch of the same top-2 layer (the
oracle) and, for reference, ``ragged_dot`` grouped matmuls.

``--decode``: the forward pass of a top-2 layer with few tokens (a decode step of 1 to 256
sequences), the dropless dispatch against every expert on every token, which is what
``moe.dense_token_experts`` picks at or below its threshold (tokens x experts).

    python benchmarks/moe_dispatch.py [--tokens 4096] [--d-model 256] [--ffn 256] [--quick] [--decode]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, time_fn  # noqa: E402

from open_r1_jax.config import DRNConfig, MoEConfig  # noqa: E402
from open_r1_jax.model.moe import DRNFeedForward, MoEFeedForward  # noqa: E402


def fwd_bwd(layer, x, mask):
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(p, x):
        out, aux = nnx.merge(graphdef, p, rest)(x, mask)
        return jnp.mean(out.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


def decode(args) -> None:
    """Forward time of one top-2 layer with few tokens: dropless (blocked on CPU) vs dense dispatch."""
    figures = {"d_model": args.d_model, "expert_ffn_dim": args.ffn, "top_k": 2}
    print(f"{'experts':>7} {'tokens':>6} {'dropless (ms)':>14} {'dense (ms)':>11} {'dense speedup':>14}")
    for e in args.experts:
        layers = {}
        for disp in ("dropless", "dense"):
            cfg = MoEConfig(n_experts=e, top_k=2, expert_ffn_dim=args.ffn, dispatch=disp, dense_token_experts=0)
            layer = MoEFeedForward(args.d_model, cfg, 0.02, jnp.float32, nnx.Rngs(0))
            layers[disp] = jax.jit(lambda x, m, layer=layer: layer(x, m)[0])
        for n in (1, 4, 16, 64, 256):
            x = jax.random.normal(jax.random.key(n), (n, 1, args.d_model), jnp.float32)
            mask = jnp.ones((n, 1), bool)
            ms = {k: 1e3 * time_fn(f, x, mask, repeats=args.repeats * 20) for k, f in layers.items()}
            speedup = ms["dropless"] / ms["dense"]
            print(f"{e:>7} {n:>6} {ms['dropless']:>14.3f} {ms['dense']:>11.3f} {speedup:>13.2f}x", flush=True)
            figures[f"e{e}_n{n}"] = {"dropless_ms": ms["dropless"], "dense_ms": ms["dense"], "speedup": speedup}
    emit("moe_dispatch_decode", figures)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--decode", action="store_true", help="few tokens, forward only: dropless vs dense")
    args = ap.parse_args()
    if args.decode:
        return decode(args)
    if args.quick:
        args.tokens, args.d_model, args.ffn, args.experts, args.repeats = 256, 64, 64, [8], 2
    x = jax.random.normal(jax.random.key(0), (1, args.tokens, args.d_model), jnp.float32)
    mask = jnp.ones((1, args.tokens), bool)
    figures = {"tokens": args.tokens, "d_model": args.d_model, "expert_ffn_dim": args.ffn, "top_k": 2}
    print(
        f"{'experts':>7} {'DRN dense (s)':>14} {'dropless top-2 (s)':>19} {'speedup':>8} "
        f"{'dense-dispatch (s)':>19} {'ragged_dot (s)':>15}"
    )
    for e in args.experts:
        rngs = nnx.Rngs(0)
        row = {}
        drn = DRNFeedForward(args.d_model, DRNConfig(n_experts=e, expert_ffn_dim=args.ffn), 0.02, jnp.float32, rngs)
        for name, layer in [("drn", drn)] + [
            (
                f"moe_{disp}_{impl}",
                MoEFeedForward(
                    args.d_model,
                    MoEConfig(n_experts=e, top_k=2, expert_ffn_dim=args.ffn, dispatch=disp, grouped_impl=impl),
                    0.02,
                    jnp.float32,
                    rngs,
                ),
            )
            for disp, impl in [("dropless", "auto"), ("dense", "auto"), ("dropless", "ragged_dot")]
        ]:
            fn, params = fwd_bwd(layer, x, mask)
            row[name] = time_fn(fn, params, x, repeats=args.repeats)
        speedup = row["drn"] / row["moe_dropless_auto"]
        print(
            f"{e:>7} {row['drn']:>14.4f} {row['moe_dropless_auto']:>19.4f} {speedup:>7.1f}x "
            f"{row['moe_dense_auto']:>19.4f} {row['moe_dropless_ragged_dot']:>15.4f}",
            flush=True,
        )
        figures[f"e{e}"] = {
            "drn_dense_s": row["drn"],
            "dropless_top2_s": row["moe_dropless_auto"],
            "speedup": speedup,
            "dense_dispatch_top2_s": row["moe_dense_auto"],
            "dropless_ragged_dot_s": row["moe_dropless_ragged_dot"],
        }
    emit("moe_dispatch", figures)


if __name__ == "__main__":
    main()
