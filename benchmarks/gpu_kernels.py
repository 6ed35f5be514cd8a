"""Triton kernels on a GPU: correctness against the jnp oracles, speed against the XLA paths, and a
full train step. One script, top to bottom; every section is guarded, prints its failure and goes on.

1. correctness, bf16 and fp32 (fp32 at "highest" matmul precision, kernels in IEEE fp32): grouped
   matmul, fused grouped SwiGLU and flash attention, forward and every gradient, on awkward shapes
   (an empty expert, sizes off the blocks, packed segments, grouped-query heads). bf16 errors are
   printed next to the XLA path's own bf16 error against the same fp32 oracle.
2. speed (forward + backward, median of a few runs): grouped matmul versus ``jax.lax.ragged_dot`` and
   versus the dense dispatch (every expert on every token); fused SwiGLU versus unfused (three Triton
   grouped matmuls + jnp SiLU) and versus XLA (``ragged_dot``); flash attention versus the XLA attention
   at 2K and 8K tokens.
3. a train step of a GPU benchmark config (a cut-down a100x8_base: bf16, 64 experts top-6): tokens/s
   and MFU with ``model.kernels=xla`` and ``triton``.
Sized to finish within ~8 minutes on one H200. Without a CUDA GPU (or without jax-triton) it says so and
runs section 1 on small shapes through Triton's interpreter (TRITON_INTERPRET=1). The last line is
one JSON object ``{"benchmark": "gpu_kernels", ...}``.

    python benchmarks/gpu_kernels.py [--quick] [--skip-train] [--smoke]

``--smoke`` runs every section on tiny sizes wherever it is (through the interpreter on CPU): a test of
the script itself, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402
from common import time_fn as _time_fn  # noqa: E402

FIGURES: dict = {"errors": {}}
SIZES = {  # tokens, experts, top-k, D, F | attention (T, B) pairs | train overrides, steps | timing repeats
    "full": dict(moe=(8192, 64, 6, 2048, 1408), attn=((2048, 8), (8192, 2)), train=[], steps=5, repeats=5),
    "quick": dict(
        moe=(2048, 16, 4, 1024, 704),
        attn=((2048, 4), (8192, 1)),
        train=["model.n_layers=2", "model.moe.n_experts=16", "train.global_batch=4"],
        steps=3,
        repeats=3,
    ),
    "smoke": dict(
        moe=(64, 4, 2, 32, 32),
        attn=((64, 1), (96, 1)),
        steps=1,
        repeats=1,
        train=[
            "model.vocab_size=256",
            "model.d_model=32",
            "model.n_layers=2",
            "model.n_heads=2",
            "model.n_kv_heads=1",
            "model.head_dim=16",
            "model.max_seq_len=64",
            "model.drn.expert_ffn_dim=32",
            "model.moe.n_experts=4",
            "model.moe.top_k=2",
            "model.moe.expert_ffn_dim=32",
            "train.seq_len=64",
            "train.global_batch=2",
        ],
    ),
}


def section(name: str):
    """Decorator: run the section, print and record any failure, never stop the script."""

    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n=== {name} ===", flush=True)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # a broken section must not hide the others
                traceback.print_exc()
                FIGURES["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            finally:
                print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)

        return run

    return wrap


def versions_and_mode() -> str:
    """Pick "gpu" (jax-triton on CUDA) or "interpreter" and print the versions. TRITON_INTERPRET must be
    set before triton is first imported, so the mode is chosen before any import of triton; a GPU
    machine whose jax-triton fails to import re-runs this script under the interpreter."""
    dev = jax.devices()[0]
    cuda = dev.platform == "gpu" and "rocm" not in str(getattr(dev.client, "platform_version", "")).lower()
    interpret = os.environ.get("TRITON_INTERPRET") == "1" or not cuda
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    import jaxlib

    info = {"jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?"), "python": sys.version.split()[0]}
    for mod in ("triton", "jax_triton", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:
            info[mod] = f"unavailable ({type(e).__name__}: {str(e)[:160]})"
    info["device"] = f"{dev.platform}:{dev.device_kind}"
    for k, v in info.items():
        print(f"{k:>10}: {v}", flush=True)
    FIGURES["versions"] = info
    if not interpret and any(info[m].startswith("unavailable") for m in ("triton", "jax_triton")):
        print(
            "\nCUDA GPU found but triton/jax_triton cannot be imported: re-running under the interpreter\n", flush=True
        )
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "TRITON_INTERPRET": "1"})
    if interpret:
        why = "no CUDA GPU found" if not cuda else "TRITON_INTERPRET=1"
        print(f"\n{why}: correctness through Triton's interpreter on small shapes; no speed or train sections")
        return "interpreter"
    return "gpu"


# ----------------------------------------------------------------------------- 1. correctness


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-2))


def errors(fn, ref, args, argnums) -> dict[str, float]:
    """Relative errors of fn against ref (evaluated in fp32 on the same inputs): forward and grads."""
    f32 = [a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
    ct = jax.random.normal(jax.random.key(9), jax.eval_shape(ref, *f32).shape, jnp.float32)
    dot = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) * ct)
    out = {"fwd": rel_err(jax.jit(fn)(*args), jax.jit(ref)(*f32))}
    grads = jax.jit(jax.grad(dot(fn), argnums))(*args)
    grads_ref = jax.jit(jax.grad(dot(ref), argnums))(*f32)
    for i, g, gr in zip(argnums, grads, grads_ref):
        out[f"d{i}"] = rel_err(g, gr)
    return out


def cases(mode: str):
    """(name, triton fn, xla fn, oracle, args builder(dtype), argnums) per kernel."""
    from open_r1_jax.kernels import ops

    small = mode != "gpu"
    rows, d, f = (100, 48, 40) if small else (3000, 512, 384)
    sizes = jnp.asarray([30, 0, 47, 23] if small else [700, 0, 1, 999, 300, 500, 455, 45], jnp.int32)
    n_exp = sizes.shape[0]
    b, t, h, g, k = (2, 50, 4, 2, 24) if small else (2, 1000, 8, 2, 128)
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3 :], seg[0, (3 * t) // 4 :], seg[-1, t - 7 :] = 2, 3, 0
    seg = jnp.asarray(seg)

    def rnd(shape, dtype, scale=1.0, i=0):
        return (scale * jax.random.normal(jax.random.key(i), shape)).astype(dtype)

    def gmm_args(dt):
        return rnd((rows, d), dt, 1.0, 1), rnd((n_exp, d, f), dt, d**-0.5, 2)

    def ffn_args(dt):
        return (
            rnd((rows, d), dt, 1.0, 1),
            rnd((n_exp, d, f), dt, d**-0.5, 2),
            rnd((n_exp, d, f), dt, d**-0.5, 3),
            rnd((n_exp, f, d), dt, f**-0.5, 4),
            jax.random.uniform(jax.random.key(5), (rows,)),
        )

    def attn_args(dt):
        return rnd((b, t, h, k), dt, 1.0, 6), rnd((b, t, g, k), dt, 1.0, 7), rnd((b, t, g, k), dt, 1.0, 8)

    return [
        (
            "grouped_matmul",
            lambda x, w: ops.grouped_matmul(x, w, sizes, "triton"),
            lambda x, w: ops.grouped_matmul(x, w, sizes, "xla"),
            lambda x, w: ops.grouped_matmul_reference(x, w, sizes),
            gmm_args,
            (0, 1),
        ),
        (
            "fused_ffn",
            lambda x, a, b_, c, s: ops.grouped_swiglu(x, sizes, a, b_, c, s, "triton"),
            lambda x, a, b_, c, s: ops.grouped_swiglu(x, sizes, a, b_, c, s, "xla"),
            lambda x, a, b_, c, s: ops.grouped_swiglu_reference(x, sizes, a, b_, c, s),
            ffn_args,
            (0, 1, 2, 3, 4),
        ),
        (
            "flash_attention",
            lambda q, k_, v: ops.attention(q, k_, v, seg, "triton"),
            lambda q, k_, v: ops.attention(q, k_, v, seg, "xla"),
            lambda q, k_, v: ops.attention_reference(q, k_, v, seg),
            attn_args,
            (0, 1, 2),
        ),
    ]


@section("correctness")
def correctness(mode: str):
    out, ok = {}, True
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 3e-2)):
        for name, tri, xla, ref, make, argnums in cases(mode):
            try:
                with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
                    args = make(jnp.dtype(dtype))
                    err = errors(tri, ref, args, argnums)
                    xla_err = errors(xla, ref, args, argnums) if dtype == "bfloat16" else {}
            except Exception as e:
                traceback.print_exc()
                out[f"{name}_{dtype}"], ok = f"failed: {type(e).__name__}: {str(e)[:200]}", False
                continue
            bound = {key: max(tol, 2 * xla_err.get(key, 0.0)) for key in err}
            passed = all(err[key] <= bound[key] for key in err)
            ok &= passed
            out[f"{name}_{dtype}"] = {"max_rel_err": max(err.values()), "passed": passed}
            shown = "  ".join(
                f"{key} {v:.1e}" + (f" (xla {xla_err[key]:.1e})" if xla_err else "") for key, v in err.items()
            )
            print(f"{name:>16} {dtype:>8}: {'PASS' if passed else 'FAIL'}  {shown}", flush=True)
    FIGURES["correctness"], FIGURES["correctness_passed"] = out, ok


# ----------------------------------------------------------------------------- 2. speed


def fwd_bwd(f, argnums):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums))


def _routing(n_tokens, n_experts, top_k, seed=0):
    """Skewed random top-k routing -> (row -> token, group sizes), rows sorted by expert."""
    logits = jax.random.gumbel(jax.random.key(seed), (n_tokens, n_experts)) + jnp.linspace(0, 2, n_experts)
    experts = jax.lax.top_k(logits, top_k)[1].reshape(-1)
    order = jnp.argsort(experts, stable=True)
    return order // top_k, jnp.bincount(experts, length=n_experts).astype(jnp.int32)


@section("speed: grouped matmul and fused FFN")
def speed_moe(size: dict):
    from open_r1_jax.kernels import ops

    n_tok, n_exp, top_k, d, f = size["moe"]
    time_fn = functools.partial(_time_fn, repeats=size["repeats"])
    dt = jnp.bfloat16
    token, sizes = _routing(n_tok, n_exp, top_k)
    ks = jax.random.split(jax.random.key(1), 5)
    x_tok = jax.random.normal(ks[0], (n_tok, d), dt)
    x = x_tok[token]  # [R,D] sorted by expert
    wg, wu = (jax.random.normal(k_, (n_exp, d, f), dt) * d**-0.5 for k_ in ks[1:3])
    wd = jax.random.normal(ks[3], (n_exp, f, d), dt) * f**-0.5
    scale = jax.random.uniform(ks[4], (x.shape[0],))
    res = {"tokens": n_tok, "experts": n_exp, "top_k": top_k, "d_model": d, "ffn": f}
    print(f"rows {x.shape[0]} = {n_tok} tokens x top-{top_k}, {n_exp} experts, D {d}, F {f}, bf16; fwd+bwd ms")

    def dense(x_tok, w):  # the dense dispatch: every expert on every token
        return jnp.einsum("nd,edf->nef", x_tok, w)

    t_tri = time_fn(fwd_bwd(lambda x, w: ops.grouped_matmul(x, w, sizes, "triton"), (0, 1)), x, wg)
    t_rag = time_fn(fwd_bwd(lambda x, w: ops.grouped_matmul(x, w, sizes, "xla"), (0, 1)), x, wg)
    t_den = time_fn(fwd_bwd(dense, (0, 1)), x_tok, wg)
    res.update(
        gmm_triton_ms=t_tri * 1e3,
        gmm_ragged_dot_ms=t_rag * 1e3,
        gmm_dense_ms=t_den * 1e3,
        gmm_speedup_vs_ragged_dot=t_rag / t_tri,
        gmm_speedup_vs_dense=t_den / t_tri,
    )
    print(
        f"grouped matmul  triton {t_tri * 1e3:8.2f}  ragged_dot {t_rag * 1e3:8.2f}  dense {t_den * 1e3:8.2f}"
        f"  -> x{t_rag / t_tri:.2f} vs ragged_dot, x{t_den / t_tri:.2f} vs dense"
    )

    from open_r1_jax.kernels.grouped_matmul import grouped_matmul as gmm

    def unfused(x, a, b, c, s):
        h = jax.nn.silu(gmm(x, a, sizes)) * gmm(x, b, sizes)
        return gmm(h, c, sizes) * s[:, None].astype(x.dtype)

    args, argnums = (x, wg, wu, wd, scale), (0, 1, 2, 3, 4)
    t_fused = time_fn(fwd_bwd(lambda x, a, b, c, s: ops.grouped_swiglu(x, sizes, a, b, c, s, "triton"), argnums), *args)
    t_unf = time_fn(fwd_bwd(unfused, argnums), *args)
    t_xla = time_fn(fwd_bwd(lambda x, a, b, c, s: ops.grouped_swiglu(x, sizes, a, b, c, s, "xla"), argnums), *args)
    res.update(
        ffn_fused_ms=t_fused * 1e3,
        ffn_unfused_triton_ms=t_unf * 1e3,
        ffn_xla_ragged_dot_ms=t_xla * 1e3,
        ffn_speedup_vs_unfused=t_unf / t_fused,
        ffn_speedup_vs_xla=t_xla / t_fused,
    )
    print(
        f"SwiGLU experts  fused {t_fused * 1e3:8.2f}  unfused triton {t_unf * 1e3:8.2f}  xla {t_xla * 1e3:8.2f}"
        f"  -> x{t_unf / t_fused:.2f} vs unfused, x{t_xla / t_fused:.2f} vs xla"
    )
    FIGURES["moe"] = res


@section("speed: flash attention")
def speed_attention(size: dict):
    from open_r1_jax.kernels import ops

    h, g, k, dt = (16, 4, 128, jnp.bfloat16) if size["moe"][3] > 32 else (2, 1, 16, jnp.bfloat16)
    time_fn = functools.partial(_time_fn, repeats=size["repeats"])
    out = {}
    for t, b in size["attn"]:
        ks = jax.random.split(jax.random.key(t), 3)
        q = jax.random.normal(ks[0], (b, t, h, k), dt)
        kk, v = (jax.random.normal(k_, (b, t, g, k), dt) for k_ in ks[1:])
        seg = jnp.broadcast_to(jnp.arange(t) // (t // 4) + 1, (b, t)).astype(jnp.int32)  # 4 packed documents
        row = {}
        for impl in ("triton", "xla"):
            f = lambda q, kk, v, impl=impl: ops.attention(q, kk, v, seg, impl)
            try:
                row[f"{impl}_fwd_ms"] = time_fn(jax.jit(f), q, kk, v) * 1e3
                row[f"{impl}_fwd_bwd_ms"] = time_fn(fwd_bwd(f, (0, 1, 2)), q, kk, v) * 1e3
            except Exception as e:  # e.g. XLA attention out of memory at 8K
                print(f"T={t} {impl}: {type(e).__name__}: {str(e)[:200]}")
        if "xla_fwd_bwd_ms" in row and "triton_fwd_bwd_ms" in row:
            row["speedup_fwd"] = row["xla_fwd_ms"] / row["triton_fwd_ms"]
            row["speedup_fwd_bwd"] = row["xla_fwd_bwd_ms"] / row["triton_fwd_bwd_ms"]
        print(f"T={t:5d} B={b} H={h} G={g} K={k}: " + "  ".join(f"{key} {v:.2f}" for key, v in row.items()), flush=True)
        out[f"T{t}"] = row
    FIGURES["attention"] = out


# ----------------------------------------------------------------------------- 3. train step

BENCH_CONFIG = [  # a cut-down configs/a100x8_base.yaml for one GPU
    "model.vocab_size=32768",
    "model.d_model=2048",
    "model.n_layers=4",
    "model.drn_layers=1",
    "model.n_heads=16",
    "model.n_kv_heads=4",
    "model.head_dim=128",
    "model.max_seq_len=2048",
    "model.drn.n_experts=4",
    "model.drn.expert_ffn_dim=1408",
    "model.moe.n_experts=64",
    "model.moe.top_k=6",
    "model.moe.expert_ffn_dim=1408",
    "model.moe.n_shared_experts=2",
    "model.moe.router=sigmoid",
    "model.dtype=bfloat16",
    "train.seq_len=2048",
    "train.global_batch=8",
    "train.steps=100",
    "train.warmup_steps=10",
    "run.progress=false",
    "run.tensorboard=false",
]


@section("train step")
def train_step(size: dict):
    from open_r1_jax.config import load_config
    from open_r1_jax.model import build_model, split_model
    from open_r1_jax.training.metrics import flops_per_token, measure_peak_flops
    from open_r1_jax.training.optim import make_optimizer
    from open_r1_jax.training.stages import Pretrain
    from open_r1_jax.training.step import init_state, make_train_step

    overrides, steps = BENCH_CONFIG + size["train"], size["steps"]
    peak = measure_peak_flops(jnp.bfloat16, n=8192 if jax.devices()[0].platform == "gpu" else 512)
    nominal = 989e12 if "H200" in jax.devices()[0].device_kind or "H100" in jax.devices()[0].device_kind else None
    print(
        f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" + (f", nominal {nominal / 1e12:.0f}" if nominal else "")
    )
    out = {"config": overrides, "measured_peak_tflops": peak / 1e12}
    for kernels in ("xla", "triton"):
        try:
            cfg = load_config(None, overrides + [f"model.kernels={kernels}"])
            b, t = cfg.train.global_batch, cfg.train.seq_len
            rng = np.random.default_rng(0)
            tok = rng.integers(0, cfg.model.vocab_size, size=(b, t + 1)).astype(np.int32)
            seg = (np.arange(t)[None] // (t // 4) + 1).repeat(b, 0).astype(np.int32)  # 4 documents a row
            batch = {
                "inputs": tok[:, :-1],
                "targets": tok[:, 1:],
                "segment_ids": seg,
                "positions": (np.arange(t) % (t // 4))[None].repeat(b, 0).astype(np.int32),
            }
            batch = {k_: jnp.asarray(v) for k_, v in batch.items()}
            graphdef, params, model_state = split_model(build_model(cfg.model, 0))
            tx = make_optimizer(cfg.train)
            state = init_state(params, model_state, tx, cfg)
            step = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg), donate_argnums=0)
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m["loss"])
            compile_s = time.perf_counter() - t0
            state, m = step(state, batch)
            jax.block_until_ready(m["loss"])
            t0 = time.perf_counter()
            losses = []
            for _ in range(steps):
                state, m = step(state, batch)
                losses.append(m["loss"])
            jax.block_until_ready(losses)
            dt = (time.perf_counter() - t0) / steps
            tps = b * t / dt
            fpt = flops_per_token(cfg.model, t)
            row = {
                "step_ms": dt * 1e3,
                "tokens_per_s": tps,
                "mfu_vs_measured": fpt * tps / peak,
                "compile_s": compile_s,
                "losses": [float(x) for x in losses],
            }
            if nominal:
                row["mfu_vs_nominal"] = fpt * tps / nominal
            print(
                f"kernels={kernels:6s}: {dt * 1e3:8.1f} ms/step  {tps:10.0f} tokens/s  "
                f"MFU {row['mfu_vs_measured']:.1%} of measured peak  (compile {compile_s:.0f} s)",
                flush=True,
            )
            out[kernels] = row
            del state, step
        except Exception as e:
            traceback.print_exc()
            out[kernels] = f"failed: {type(e).__name__}: {str(e)[:300]}"
    if isinstance(out.get("xla"), dict) and isinstance(out.get("triton"), dict):
        out["speedup_triton_vs_xla"] = out["xla"]["step_ms"] / out["triton"]["step_ms"]
        print(f"train step: triton x{out['speedup_triton_vs_xla']:.2f} vs xla")
    FIGURES["train"] = out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller speed and train sizes")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="every section on tiny sizes, also on CPU (tests the script)")
    args = ap.parse_args()
    size = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    t0 = time.perf_counter()
    mode = "unknown"
    try:
        mode = versions_and_mode()
    except Exception as e:
        traceback.print_exc()
        FIGURES["errors"]["versions"] = repr(e)
    FIGURES["mode"] = mode
    correctness(mode)
    if mode == "gpu" or args.smoke:
        speed_moe(size)
        speed_attention(size)
        if not args.skip_train:
            train_step(size)
    else:
        print("\nno GPU found (or no jax-triton): speed and train sections skipped")
    FIGURES["wall_s"] = time.perf_counter() - t0
    emit("gpu_kernels", FIGURES)


if __name__ == "__main__":
    main()
