"""``long``: loss by position on long held-out text, with full and with LSH attention, and a long
generation with its repetition statistics.

Text: the longest held-out documents of the embedded corpus, joined with the end-of-document token, cut
to ``long.tokens``. Full attention runs through the decoding cache in chunks of ``long.chunk`` tokens
(a 20K x 20K score matrix never exists); LSH attention (``model.attention.kind`` switched, no new
weights: the model's own LSH settings) runs the whole sequence in one forward pass, as in training.
Positions beyond ``model.max_seq_len`` use the model's rotary scaling. Mean loss per bucket of
``long.bucket`` positions (0-1K, 1K-2K, ...).

Generation: ``long.generate_tokens`` tokens sampled after a 64-token held-out prompt, end-of-document
tokens included; distinct-n (unique n-grams / n-grams, n = 1..4) and the longest token span that
occurs twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PROMPT = 64


def long_text(model, n: int) -> list[int]:
    from open_r1_jax.eval.mc_data import heldout_documents

    out: list[int] = []
    for _, text in sorted(heldout_documents(), key=lambda d: -len(d[1])):
        out += model.tokenizer.encode(text).tolist() + [model.tokenizer.eos_id]
        if len(out) > n:
            return out[: n + 1]
    raise ValueError(f"long.tokens={n}: the held-out text has only {len(out)} tokens")


def cached_losses(model, tokens: list[int], chunk: int) -> np.ndarray:
    """NLL of tokens[1:] [n], the model reading tokens chunk by chunk through its decoding cache."""
    from open_r1_jax.model import merge_model

    n = len(tokens) - 1
    n_pad = -(-n // chunk) * chunk
    x = np.zeros(n_pad + 1, np.int32)
    x[: n + 1] = tokens
    graphdef = model.pre.graphdef

    def step(params, state, cache, inp, tgt, index):
        m = merge_model(graphdef, params, state)
        pos = index + jnp.arange(chunk, dtype=jnp.int32)[None]
        logits, cache = m.decode(inp, pos, jnp.ones_like(inp, bool), cache, index)
        lp = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
        return -lp[0], cache

    step = jax.jit(step, donate_argnums=2)
    cache = merge_model(graphdef, model.pre.params, model.pre.model_state).init_cache(1, n_pad)
    out = []
    for i in range(0, n_pad, chunk):
        nll, cache = step(model.pre.params, model.pre.model_state, cache, x[None, i : i + chunk],
                          x[None, i + 1 : i + chunk + 1], jnp.int32(i))  # fmt: skip
        out.append(np.asarray(nll))
    return np.concatenate(out)[:n]


def bucketed(nll: np.ndarray, bucket: int) -> list[float]:
    return [float(nll[i : i + bucket].mean()) for i in range(0, len(nll), bucket)]


def distinct(tokens: list[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def longest_repeat(tokens: list[int]) -> int:
    """Length of the longest span occurring at least twice (overlaps allowed): binary search on the
    length; spans of one length compared by a polynomial rolling hash (uint64, wrapping), a repeat
    confirmed on the tokens themselves."""
    t = np.asarray(tokens, np.uint64) + np.uint64(1)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(t) + 1, np.uint64)
        for i, v in enumerate(t):  # prefix[i + 1] = prefix[i] * base + t[i]
            prefix[i + 1] = prefix[i] * base + v
        powers = np.ones(len(t) + 1, np.uint64)
        for i in range(1, len(t) + 1):
            powers[i] = powers[i - 1] * base

    def repeats(k: int) -> bool:
        with np.errstate(over="ignore"):
            h = prefix[k:] - prefix[: len(prefix) - k] * powers[k]
        first: dict[int, int] = {}
        for i, x in enumerate(h.tolist()):
            j = first.setdefault(x, i)
            if j != i and tokens[j : j + k] == tokens[i : i + k]:
                return True
        return False

    lo, hi = 0, len(tokens) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if repeats(mid) else (lo, mid - 1)
    return lo


def run(model, lsh_model, cfg, seed: int) -> dict:
    from open_r1_jax.generate import Generator, Sampling

    tokens = long_text(model, cfg.tokens)
    full = cached_losses(model, tokens, cfg.chunk)
    lsh = -model_target(lsh_model, tokens)
    metrics = {"loss_full": {"value": float(full.mean()), "n": len(full)},
               "loss_lsh": {"value": float(lsh.mean()), "n": len(lsh)}}  # fmt: skip
    gen = Generator(model.config, model.pre.params, model.pre.model_state)
    sampling = Sampling(cfg.temperature, top_p=cfg.top_p, seed=seed)
    out = gen.generate([tokens[:PROMPT]], cfg.generate_tokens, sampling, steps_per_call=256).tokens[0].tolist()
    for n in (1, 2, 3, 4):
        metrics[f"distinct_{n}"] = {"value": distinct(out, n), "n": len(out)}
    metrics["longest_repeat_tokens"] = {"value": longest_repeat(out), "n": len(out)}
    window = 1024
    rolling = [distinct(out[i : i + window], 4) for i in range(0, max(len(out) - window, 0) + 1, window)]
    return {
        "metrics": metrics,
        "config": {
            "tokens": len(full),
            "bucket": cfg.bucket,
            "lsh": {k: getattr(lsh_model.config.attention, k) for k in ("n_hashes", "n_buckets", "chunk_size")},
            "generated": len(out),
        },  # fmt: skip
        "by_position": {"bucket": cfg.bucket, "full": bucketed(full, cfg.bucket), "lsh": bucketed(lsh, cfg.bucket)},
        "generation": {"rolling_distinct_4": rolling, "window": window, "text_head": model.tokenizer.decode(out[:400])},
    }


def model_target(model, tokens: list[int]) -> np.ndarray:
    """log p of tokens[1:] from one forward pass over the whole sequence."""
    return model.score_rows([tokens], 1)[0][0]
