"""Preference pairs for DPO: JSONL reading, the embedded demo pairs, tokenisation into fixed-size rows.

JSONL lines: ``{"prompt" | "query": str, "chosen": str, "rejected": str}`` (TRL writes "prompt", the seed
"query"). A malformed line is reported with file:line and counted; the run fails only when their share
exceeds ``dpo.max_bad_fraction``.

Each pair becomes two rows of ``max_len`` tokens (prompt + response), with ``mask`` marking the target
positions that belong to the response: the sequence log-prob is the sum over those targets (TRL).
Truncation: the prompt keeps its last ``max_prompt_len`` tokens, the response is cut to fit ``max_len``;
both are counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from open_r1_jax.config import DataConfig, DPOConfig
from open_r1_jax.data.instruct import skipped_lines
from open_r1_jax.data.jsonl import read_jsonl
from open_r1_jax.data.sources import load_documents


class PreferenceDataError(ValueError):
    """Too many malformed preference lines, or no usable pair."""


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    where: str = ""


@dataclass
class PairReport:
    pairs: int = 0
    bad: list[str] = field(default_factory=list)
    prompt_truncated: int = 0
    response_truncated: int = 0

    def summary(self) -> str:
        truncated = f", {self.prompt_truncated} prompts and {self.response_truncated} responses truncated"
        return f"{self.pairs} pairs" + skipped_lines(self.bad) + truncated


def _pair(rec, where: str) -> Pair | str:
    prompt = rec.get("prompt", rec.get("query")) if isinstance(rec, dict) else None
    fields = (prompt, rec.get("chosen"), rec.get("rejected")) if isinstance(rec, dict) else (None,) * 3
    if not all(isinstance(x, str) for x in fields):
        return "needs string fields 'prompt' (or 'query'), 'chosen', 'rejected'"
    return Pair(*fields, where=where)


def read_pairs(path: str | Path, max_bad_fraction: float, report: PairReport) -> list[Pair]:
    """Pairs of a JSONL file; malformed lines are counted in ``report.bad`` (``data/jsonl.py``)."""
    return read_jsonl(
        path,
        _pair,
        report.bad,
        what="dpo: preference file",
        error=PreferenceDataError,
        max_bad_fraction=max_bad_fraction,
        setting="dpo.max_bad_fraction",
    )


def corrupt(text: str, rng: random.Random, rate: float = 0.2) -> str:
    """Replace about ``rate`` of the non-space characters by random printable ones (never the same)."""
    chars = list(text)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_()[]:=.,+-*"
    spots = [i for i, c in enumerate(chars) if not c.isspace()]
    for i in rng.sample(spots, max(1, int(rate * len(spots)))) if spots else []:
        chars[i] = rng.choice([a for a in alphabet if a != chars[i]])
    return "".join(chars)


def demo_pairs(heldout: bool, n: int, seed: int, max_corpus_mb: float = 4.0) -> list[Pair]:
    """Deterministic pairs from the stdlib corpus: prompt = two lines of code, chosen = the true next
    two lines, rejected = the same two lines with 20% of their characters corrupted (typos a language
    model can learn to disprefer). Held-out pairs come from the held-out files only."""
    train, held, _ = load_documents(DataConfig(max_corpus_mb=max_corpus_mb))
    rng = random.Random(seed + (1 if heldout else 0))
    files = [[ln for ln in d.text.splitlines() if ln.strip() and len(ln) < 60] for d in (held if heldout else train)]
    files = [f for f in files if len(f) >= 8]
    pairs: list[Pair] = []
    while len(pairs) < n:
        lines = files[rng.randrange(len(files))]
        start = rng.randrange(len(lines) - 4)
        prompt, cont = "\n".join(lines[start : start + 2]) + "\n", "\n".join(lines[start + 2 : start + 4]) + "\n"
        pairs.append(
            Pair(prompt, cont, corrupt(cont, rng), where=f"demo:{'heldout' if heldout else 'train'}:{len(pairs)}")
        )
    return pairs


def encode_pairs(pairs: list[Pair], tokenizer, cfg: DPOConfig, report: PairReport) -> dict[str, np.ndarray]:
    """-> arrays [P, max_len] for chosen and rejected rows: ``*_inputs``, ``*_targets``, ``*_mask``
    (response targets), ``*_segment_ids`` (1 = real token)."""
    t = cfg.max_len
    out = {
        f"{side}_{k}": np.zeros((len(pairs), t), np.int32)
        for side in ("chosen", "rejected")
        for k in ("inputs", "targets", "mask", "segment_ids")
    }
    for i, p in enumerate(pairs):
        prompt = tokenizer.encode(p.prompt)
        if len(prompt) > cfg.max_prompt_len:
            prompt = prompt[-cfg.max_prompt_len :]
            report.prompt_truncated += 1
        for side, text in (("chosen", p.chosen), ("rejected", p.rejected)):
            resp = np.concatenate([tokenizer.encode(text), [tokenizer.eos_id]]).astype(np.int32)
            seq = np.concatenate([prompt, resp])
            if len(seq) > t + 1:
                seq = seq[: t + 1]
                report.response_truncated += 1
            n = len(seq) - 1
            out[f"{side}_inputs"][i, :n] = seq[:-1]
            out[f"{side}_targets"][i, :n] = seq[1:]
            out[f"{side}_mask"][i, len(prompt) - 1 : n] = 1  # targets that are response tokens
            out[f"{side}_segment_ids"][i, :n] = 1
    report.pairs += len(pairs)
    return out


def load_pairs(cfg: DPOConfig, seed: int, tokenizer, log) -> tuple[dict, dict | None, PairReport]:
    """Train and held-out pairs (``dpo.train_path`` / ``eval_path``, or the embedded demo), encoded.
    -> (train arrays, held-out arrays or None, report); the first bad lines are logged."""
    report = PairReport()
    if cfg.train_path:
        train = read_pairs(cfg.train_path, cfg.max_bad_fraction, report)
        held = read_pairs(cfg.eval_path, cfg.max_bad_fraction, report) if cfg.eval_path else None
    else:
        train = demo_pairs(False, cfg.demo_pairs, seed)
        held = demo_pairs(True, cfg.demo_eval_pairs, seed)
    for bad in report.bad[:5]:
        log.warning("dpo data: skipped %s", bad)
    train_arr = encode_pairs(train, tokenizer, cfg, report)
    held_arr = encode_pairs(held, tokenizer, cfg, report) if held else None
    return train_arr, held_arr, report
