"""Decode cost against cache capacity: time per output token with a large, mostly empty KV cache,
reading only the filled blocks (``model.attention.decode_block``, the default 256) versus attending
over every preallocated slot (``decode_block=0``: how decoding worked before).

The tiny model's architecture (``configs/tiny.yaml``, random weights: speed does not depend on them),
with full attention and with LSH attention in every layer,
a cache of ``--capacity`` slots (8192) holding about ``--filled`` tokens (256: a 240-token prompt and
16 new tokens), batch 1, through the plain generator and through the serving engine (one slot);
alternated ``--rounds`` times in one process, medians reported. Target: >= 4x lower per token.

    python benchmarks/decode_cache.py [--capacity 8192] [--filled 256] [--rounds 3]
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


def per_token_engine(engine: Engine, prompt: list[int]) -> float:
    r = Request(prompt, NEW + 1)
    engine.submit(r)
    engine.step()  # the prefill and the first decode step
    t0 = time.perf_counter()
    while not r.done.is_set():
        engine.step()
    return (time.perf_counter() - t0) / (len(r.tokens) - 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, default=8192, help="cache slots")
    parser.add_argument("--filled", type=int, default=256, help="tokens in the cache at the end")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = load_config(ROOT / "configs/tiny.yaml").model
    prompt = [(7 * i) % 250 + 1 for i in range(args.filled - NEW)]
    lsh = dataclasses.replace(base, attention=dataclasses.replace(base.attention, kind="lsh", chunk_size=64))
    ms: dict[str, dict[str, dict[int, float]]] = {}
    for name, cfg in (("full", base), ("lsh", lsh)):
        _, params, rest = split_model(build_model(cfg))
        variants = {}
        for block in (0, cfg.attention.decode_block):
            c = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, decode_block=block))
            gen, engine = Generator(c, params, rest), Engine(c, params, rest, slots=1, context=args.capacity)
            per_token_generator(gen, prompt, args.capacity), per_token_engine(engine, prompt)  # compile
            variants[block] = (gen, engine, {"generator": [], "engine": []})
        for _ in range(args.rounds):
            for gen, engine, times in variants.values():
                times["generator"].append(per_token_generator(gen, prompt, args.capacity))
                times["engine"].append(per_token_engine(engine, prompt))
        for b, (_, _, t) in variants.items():
            for k, v in t.items():
                ms.setdefault(name, {}).setdefault(k, {})[b] = 1e3 * statistics.median(v)
    block = base.attention.decode_block
    print(f"cache of {args.capacity} slots, about {args.filled} filled, batch 1, ms per output token (median)")
    print(f"{'attention':<10} {'path':<10} {'whole cache':>12} {'filled blocks':>14} {'speed-up':>9}")
    for name, paths in ms.items():
        for k, t in paths.items():
            print(f"{name:<10} {k:<10} {t[0]:>12.2f} {t[block]:>14.2f} {t[0] / t[block]:>8.1f}x")
    emit(
        "decode_cache",
        {
            "capacity": args.capacity,
            "filled": args.filled,
            "ms_per_token": {n: {k: {"whole": t[0], "blocked": t[block]} for k, t in p.items()} for n, p in ms.items()},
            "speedup": {n: {k: t[0] / t[block] for k, t in p.items()} for n, p in ms.items()},
        },
    )


if __name__ == "__main__":
    main()
