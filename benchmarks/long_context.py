"""Long context: full versus LSH attention, side by side in one run.

1. Forward + backward (loss and gradients of a tiny model, batch 1) at 2K, 4K, 8K, 16K and 32K tokens:
   median time and compiled temporary memory (``jit(...).lower(...).compile().memory_analysis()``).
   A size whose compiled temporary memory exceeds ``--mem-limit-gb`` is compiled (memory reported)
   but not run. Every LSH size is timed before full attention (median of 5, 3 at 32K). Targets:
   LSH time(16K) / time(4K) <= 5 (full attention: ~16, quadratic); LSH trains at 32K within 8 GB.
2. Generation of 20K tokens with a tiny LSH model (``open_r1_jax.generate``, cache preallocated):
   tokens/s of the first and of the last 1K generated tokens. Target: the last 1K cost at most 2x the
   first 1K.
3. Latency of a 1024-token prompt plus 128 new tokens (greedy), full and LSH: time to the first token
   (prefill) and in total, compilation excluded.

    python benchmarks/long_context.py [--quick] [--sizes 2048,4096] [--gen-tokens 20480] [--mem-limit-gb 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, time_fn  # noqa: E402

from open_r1_jax.config import load_config  # noqa: E402
from open_r1_jax.generate import Generator, Sampling  # noqa: E402
from open_r1_jax.model import (  # noqa: E402
    build_model,  # noqa: E402
    merge_model,
    split_model,
)
from open_r1_jax.training.losses import summed_nll  # noqa: E402

TINY = [
    "model.vocab_size=272",
    "model.d_model=64",
    "model.n_layers=2",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=16",
    "model.drn.expert_ffn_dim=64",
    "model.moe.expert_ffn_dim=64",
    "model.kernels=xla",
    "train.seq_len=64",
    "model.max_seq_len=2048",
]
LSH = [
    "model.attention.kind=lsh",
    "model.attention.n_hashes=2",
    "model.attention.n_buckets=64",
    "model.attention.chunk_size=64",
]
GB = 1 << 30


def model_config(kind: str, extra=()):
    return load_config(None, TINY + (LSH if kind == "lsh" else []) + list(extra)).model


def train_cost(kind: str, t: int, mem_limit: float, repeats: int) -> dict:
    """Loss + gradients at t tokens: {"temp_gb", "seconds" (None when over the memory limit)}."""
    graphdef, params, rest = split_model(build_model(model_config(kind), 0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, t + 1)), jnp.int32)

    def loss(params, tokens, rng):
        logits, aux = merge_model(graphdef, params, rest)(tokens[:, :-1], rng=rng)
        nll, n = summed_nll(logits, tokens[:, 1:], jnp.ones((1, t), bool))
        return nll / n + aux["aux_loss"]

    key = jax.random.key(1)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, key).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / GB
    out = {"temp_gb": round(temp, 3), "seconds": None}
    if temp <= mem_limit:
        out["seconds"] = round(time_fn(compiled, params, tokens, key, repeats=repeats, warmup=1), 4)
    return out


def generation_rate(n_tokens: int, window: int, steps_per_call: int) -> dict:
    """Tokens/s of the first and last ``window`` generated tokens of an ``n_tokens`` generation."""
    cfg = model_config("lsh", ["model.init_std=0.2"])
    _, params, rest = split_model(build_model(cfg, 0))
    gen = Generator(cfg, params, rest)
    prompt = [list(b"Long context: ")]
    cache_len = 16 + n_tokens + steps_per_call
    sampling = Sampling(temperature=1.0, seed=0)
    gen.generate(prompt, steps_per_call + 1, sampling, steps_per_call=steps_per_call, cache_len=cache_len)  # compile
    t0 = time.perf_counter()
    out = gen.generate(prompt, n_tokens, sampling, steps_per_call=steps_per_call, cache_len=cache_len)
    total = time.perf_counter() - t0
    calls = out.calls[1:]  # after the prefill: (tokens so far, seconds) per call of steps_per_call tokens
    per_window = window // steps_per_call
    first = sum(s for _, s in calls[:per_window])
    last = sum(s for _, s in calls[-per_window:])
    return {
        "tokens": len(out.tokens[0]),
        "cache_len": cache_len,
        "seconds": round(total, 2),
        "first_tok_s": round(window / first, 1),
        "last_tok_s": round(window / last, 1),
        "last_over_first_cost": round(last / first, 3),
    }


def latency(kind: str, prompt_len: int, new: int) -> dict:
    cfg = model_config(kind, ["model.init_std=0.2"])
    _, params, rest = split_model(build_model(cfg, 0))
    gen = Generator(cfg, params, rest)
    prompt = [np.random.default_rng(0).integers(0, 256, prompt_len).tolist()]
    gen.generate(prompt, new, steps_per_call=new - 1)  # compile
    t0 = time.perf_counter()
    out = gen.generate(prompt, new, steps_per_call=new - 1)
    return {"prefill_s": round(out.prefill_s, 4), "total_s": round(time.perf_counter() - t0, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--sizes", help="comma-separated sequence lengths (default 2K..32K; quick 512..2K)")
    ap.add_argument("--gen-tokens", type=int, help="tokens generated (default 20480; quick 1024)")
    ap.add_argument("--mem-limit-gb", type=float, default=10.0, help="run a size only below this temp memory")
    args = ap.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([512, 1024, 2048] if args.quick else [2048, 4096, 8192, 16384, 32768])
    )
    gen_tokens = args.gen_tokens or (1024 if args.quick else 20480)
    window = 256 if args.quick else 1024
    prompt_len, new = (128, 16) if args.quick else (1024, 128)

    # every LSH size first, then full attention: its multi-GB runs do not disturb the LSH timings
    rows = {t: {"lsh": train_cost("lsh", t, args.mem_limit_gb, repeats=5 if t <= 16384 else 3)} for t in sizes}
    for t in sizes:
        rows[t]["full"] = train_cost("full", t, args.mem_limit_gb, repeats=3 if t <= 4096 else 1)
    print(f"forward+backward, batch 1 (tiny model: d_model 64, 2 layers; LSH {' '.join(LSH)})")
    print(f"{'tokens':>7} | {'full s':>8} {'full GB':>8} | {'LSH s':>8} {'LSH GB':>8} | full/LSH time")
    for t in sizes:
        full, lsh = rows[t]["full"], rows[t]["lsh"]
        fmt = lambda s: "skipped" if s is None else f"{s:.3f}"
        ratio = f"{full['seconds'] / lsh['seconds']:.1f}x" if full["seconds"] and lsh["seconds"] else "-"
        print(
            f"{t:>7} | {fmt(full['seconds']):>8} {full['temp_gb']:>8.2f} | {fmt(lsh['seconds']):>8} "
            f"{lsh['temp_gb']:>8.2f} | {ratio}",
            flush=True,
        )

    def growth(kind, big, small):
        a, b = rows.get(big, {}).get(kind, {}), rows.get(small, {}).get(kind, {})
        return round(a["seconds"] / b["seconds"], 2) if a.get("seconds") and b.get("seconds") else None

    lo, hi = (sizes[0], sizes[-1]) if args.quick else (4096, 16384)
    figures = {
        "sizes": rows,
        "lsh_time_ratio": growth("lsh", hi, lo),
        "ratio_of": f"time({hi}) / time({lo})",
        "full_time_ratio": growth("full", hi, lo),
    }
    print(
        f"time({hi}) / time({lo}): LSH {figures['lsh_time_ratio']}, full {figures['full_time_ratio']} "
        "(linear: 4, quadratic: 16)"
    )
    if figures["full_time_ratio"] is None and growth("full", hi // 2, lo // 2):  # full at hi over the memory limit
        figures["full_time_ratio_half"] = growth("full", hi // 2, lo // 2)
        print(f"full attention time({hi // 2}) / time({lo // 2}): {figures['full_time_ratio_half']}")

    g = generation_rate(gen_tokens, window, 128 if not args.quick else 64)
    figures["generation"] = g
    print(
        f"generation of {g['tokens']} tokens (tiny LSH model, cache {g['cache_len']}): {g['seconds']}s; "
        f"first {window}: {g['first_tok_s']} tok/s, last {window}: {g['last_tok_s']} tok/s "
        f"(last/first cost {g['last_over_first_cost']})",
        flush=True,
    )

    figures["latency"] = {kind: latency(kind, prompt_len, new) for kind in ("full", "lsh")}
    for kind, v in figures["latency"].items():
        print(
            f"latency {prompt_len}-token prompt + {new} new tokens, {kind}: first token {v['prefill_s']}s, "
            f"total {v['total_s']}s"
        )

    if not args.quick:
        big = rows.get(32768, {}).get("lsh", {})
        figures["targets"] = {
            "lsh_16k_over_4k_le_5": figures["lsh_time_ratio"] is not None and figures["lsh_time_ratio"] <= 5,
            "lsh_32k_trains_within_8gb": bool(big.get("seconds")) and big.get("temp_gb", 1e9) <= 8,
            "last_1k_le_2x_first_1k": g["last_over_first_cost"] <= 2,
        }
        print("targets:", figures["targets"])
    emit("long_context", {"quick": args.quick, **figures})


if __name__ == "__main__":
    main()
