"""``ppl``: token-level perplexity and bits per byte on held-out text.

Documents (the embedded corpus's held-out files by default, the same split as pretraining; or
``ppl.files``) are tokenised, joined with the end-of-document token, and cut into windows of
``seq_len + 1`` tokens; every token after a window's first is predicted once. Perplexity is
exp(mean NLL per token) of this model's tokenizer: the seed's "PPL < 15" is compared with it, so a byte
model's figure (per byte) and a BPE model's (per ~4 bytes) are not comparable with each other. Bits per
byte (total NLL / ln 2 / UTF-8 bytes of the predicted tokens) is: use it across tokenizers.
"""

from __future__ import annotations

import math

import numpy as np


def documents(cfg) -> tuple[list[str], str]:
    """-> (texts, what they are)."""
    from open_r1_jax.config import DataConfig
    from open_r1_jax.data.sources import load_documents, read_documents

    if cfg.files:
        docs, report = read_documents(list(cfg.files), cfg.text_key, "ppl.files")
        if not docs:
            raise ValueError(f"ppl.files: no non-empty document in {list(cfg.files)}")
        return [d.text for d in docs], f"{', '.join(cfg.files)} ({report.summary()})"
    _, held, _ = load_documents(DataConfig())
    return [d.text for d in held], f"embedded corpus, held-out split ({len(held)} files)"


def run(model, cfg) -> dict:
    tok = model.tokenizer
    texts, source = documents(cfg)
    t = cfg.seq_len or model.config.max_seq_len
    stream: list[int] = []
    for text in texts:
        stream += tok.encode(text).tolist() + [tok.eos_id]
        if len(stream) > cfg.max_tokens + t:
            break
    n_windows = max(min(len(stream) - 1, cfg.max_tokens) // t, 1)
    rows = [stream[i * t : i * t + t + 1] for i in range(n_windows)]
    nll = n_tok = n_bytes = 0.0
    for row, (target, _) in zip(rows, model.score_rows(rows, cfg.batch)):
        nll -= float(np.sum(target, dtype=np.float64))
        n_tok += len(target)
        n_bytes += int(tok.token_bytes[np.asarray(row[1:])].sum())
    loss = nll / n_tok
    return {
        "metrics": {
            "ppl": {"value": math.exp(min(loss, 80.0)), "n": int(n_tok)},
            "loss": {"value": loss, "n": int(n_tok)},
            "bits_per_byte": {"value": nll / math.log(2) / max(n_bytes, 1), "n": int(n_bytes)},
        },
        "config": {"data": source, "seq_len": t, "tokens": int(n_tok), "tokenizer": type(tok).__name__},
        "note": "ppl: per token of this model's tokenizer (what the seed's PPL < 15 is compared with); "
        "bits_per_byte compares across tokenizers",
    }
