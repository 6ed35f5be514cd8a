"""Decode cost against cache capacity: time per output token with a large, mostly empty KV cache,
reading only the filled blocks (``model.attention.decode_block``, the default 256) versus attending
over every preallocated slot (``decode_block=0``: how decoding worked before).

The tiny model's architecture (``configs/tiny.yaml``, random weights: speed does not depend on them),
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
    cfg = load_config(ROOT / "configs/tiny.yaml").model
    _, params, rest = split_model(build_model(cfg))
    prompt = [(7 * i) % 250 + 1 for i in range(args.filled - NEW)]
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
    ms = {b: {k: 1e3 * statistics.median(v) for k, v in t.items()} for b, (_, _, t) in variants.items()}
    whole, blocked = ms[0], ms[cfg.attention.decode_block]
    print(f"cache of {args.capacity} slots, about {args.filled} filled, batch 1, ms per output token (median)")
    print(f"{'path':<10} {'whole cache':>12} {'filled blocks':>14} {'speed-up':>9}")
    for k in ("generator", "engine"):
        print(f"{k:<10} {whole[k]:>12.2f} {blocked[k]:>14.2f} {whole[k] / blocked[k]:>8.1f}x")
    emit(
        "decode_cache",
        {
            "capacity": args.capacity,
            "filled": args.filled,
            "ms_per_token_whole": whole,
            "ms_per_token_blocked": blocked,
            "speedup": {k: whole[k] / blocked[k] for k in whole},
        },
    )


if __name__ == "__main__":
    main()
