"""Decode cost against cache capacity: time per output token with a large, mostly empty KV cache,
reading only the filled blocks (``model.attention.decode_block``, the default 256) versus attending
over every preallocated slot (``decode_block=0``: how decoding worked before). LSH layers also read
only the query's bucket lists (``model.attention.lsh_bucket_index``, the default) instead of every key
of the filled blocks.

The tiny model's architecture (``configs/tiny.yaml``, random weights: speed does not depend on them),
with full attention and with LSH attention in every layer,
a cache of ``--capacity`` slots (8192) holding about ``--filled`` tokens (256: a 240-token prompt and
16 new tokens), batch 1, through the plain generator and through the serving engine (one slot,
``--decode-steps`` per compiled call, the server's default 8);
alternated ``--rounds`` times in one process, medians reported. Target: >= 4x lower per token.

    python benchmarks/decode_cache.py [--capacity 8192] [--filled 256] [--rounds 3] [--decode-steps 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

from open_r1_jax.config import load_config  # noqa: E402
from open_r1_jax.generate import Generator  # noqa: E402
from open_r1_jax.model import build_model, split_model  # noqa: E402
from open_r1_jax.serving.engine import Engine, Request  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NEW = 16


def per_token_generator(gen: Generator, prompt: list[int], capacity: int) -> float:
    """Seconds per decoded token (prefill excluded) of one generation into a cache of ``capacity``."""
    out = gen.generate([prompt], NEW + 1, steps_per_call=NEW, cache_len=capacity)
    (n1, _), *decode = out.calls  # the prefill's call, then the decode calls
    return sum(s for _, s in decode) / (decode[-1][0] - n1)


def run_engine(engine: Engine, prompt: list[int], max_tokens: int) -> float:
    """Seconds from submit to the last token of one request."""
    r = Request(prompt, max_tokens)
    t0 = time.perf_counter()
    engine.submit(r)
    while not r.done.is_set():
        engine.step()
    assert len(r.tokens) == max_tokens, r.finish
    return time.perf_counter() - t0


def per_token_engine(engine: Engine, prompt: list[int]) -> float:
    """Seconds per decoded token: the request's time less that of its prefill alone (max_tokens 1),
    since the engine may decode all NEW tokens in the step that prefills."""
    return (run_engine(engine, prompt, NEW + 1) - run_engine(engine, prompt, 1)) / NEW


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, default=8192, help="cache slots")
    parser.add_argument("--filled", type=int, default=256, help="tokens in the cache at the end")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=8, help="the engine's decode steps per call")
    args = parser.parse_args()
    base = load_config(ROOT / "configs/tiny.yaml").model
    prompt = [(7 * i) % 250 + 1 for i in range(args.filled - NEW)]
    lsh = dataclasses.replace(base, attention=dataclasses.replace(base.attention, kind="lsh", chunk_size=64))
    whole = {"decode_block": 0}
    blocks = {"decode_block": base.attention.decode_block, "lsh_bucket_index": False}
    buckets = {"decode_block": base.attention.decode_block, "lsh_bucket_index": True}
    runs = {
        "full": (base, {"whole": whole, "blocks": blocks}),
        "lsh": (lsh, {"whole": whole, "blocks": blocks, "buckets": buckets}),
    }
    ms: dict[str, dict[str, dict[str, float]]] = {}  # attention -> path -> read -> ms per token
    for name, (cfg, reads) in runs.items():
        _, params, rest = split_model(build_model(cfg))
        variants = {}
        for read, keys in reads.items():
            c = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, **keys))
            gen, engine = (
                Generator(c, params, rest),
                Engine(c, params, rest, slots=1, context=args.capacity, decode_steps=args.decode_steps),
            )
            per_token_generator(gen, prompt, args.capacity), per_token_engine(engine, prompt)  # compile
            variants[read] = (gen, engine, {"generator": [], "engine": []})
        for _ in range(args.rounds):
            for gen, engine, times in variants.values():
                times["generator"].append(per_token_generator(gen, prompt, args.capacity))
                times["engine"].append(per_token_engine(engine, prompt))
        for read, (_, _, t) in variants.items():
            for k, v in t.items():
                ms.setdefault(name, {}).setdefault(k, {})[read] = 1e3 * statistics.median(v)
    print(
        f"cache of {args.capacity} slots, about {args.filled} filled, batch 1, engine {args.decode_steps} decode "
        "steps per call, ms per output token (median)"
    )
    print(
        f"{'attention':<10} {'path':<10} {'whole cache':>12} {'filled blocks':>14} {'bucket lists':>13} {'speed-up':>9}"
    )
    best = lambda t: t.get("buckets", t["blocks"])  # the default read of each attention
    for name, paths in ms.items():
        for k, t in paths.items():
            lists = f"{t['buckets']:>13.2f}" if "buckets" in t else f"{'-':>13}"
            print(f"{name:<10} {k:<10} {t['whole']:>12.2f} {t['blocks']:>14.2f} {lists} {t['whole'] / best(t):>8.1f}x")
    emit(
        "decode_cache",
        {
            "capacity": args.capacity,
            "filled": args.filled,
            "decode_steps": args.decode_steps,
            "ms_per_token": ms,
            "speedup": {n: {k: t["whole"] / best(t) for k, t in p.items()} for n, p in ms.items()},
        },
    )


if __name__ == "__main__":
    main()
