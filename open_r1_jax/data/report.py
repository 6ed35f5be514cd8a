"""What ``prepare`` did, counted: per-source tallies, dropped documents by reason, the report and its table.

Accounting unit: a document. The length stage may split one document into several windows, each a
document from then on; ``split_added`` counts the documents so created, so that for every source
``input_docs + split_added == output_docs + sum(dropped.values())`` (checked by ``balance_ok``).
With ``long_docs`` other than ``split``, ``split_added`` is 0 and input equals output plus dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Reasons a document is dropped, in stage order.
REASONS = (
    "unreadable_file",
    "malformed_record",
    "bad_media",
    "bad_utf8",
    "too_short",
    "too_long",
    "exact_duplicate",
    "near_duplicate",
    "language",
    "low_lang_score",
)
# count against data.clean.max_bad_fraction (bad_media: a media file missing, unreadable or corrupt)
ERROR_REASONS = ("unreadable_file", "malformed_record", "bad_media")


def histogram_edges(min_tokens: int, max_tokens: int) -> list[int]:
    base = {0, 32, 64, 128, 256, min_tokens, (min_tokens + max_tokens) // 2, max_tokens + 1, 1024, 2048, 4096, 16384}
    return sorted(base)


@dataclass
class SourceTally:
    input_docs: int = 0
    split_added: int = 0  # extra documents made by splitting long documents into windows
    output_docs: int = 0
    train_docs: int = 0
    heldout_docs: int = 0
    repaired_utf8: int = 0  # documents kept with invalid bytes replaced by U+FFFD
    dropped: Counter = field(default_factory=Counter)  # reason -> documents
    images: int = 0  # output documents with an image
    clips: int = 0  # output documents with an audio clip
    tokens_in: int = 0  # tokens of the documents that reached the length stage
    tokens_out: int = 0
    dropped_tokens: Counter = field(default_factory=Counter)  # reason -> tokens (incl. cut tails)

    def as_dict(self) -> dict:
        return {
            "input_docs": self.input_docs,
            "split_added": self.split_added,
            "output_docs": self.output_docs,
            "train_docs": self.train_docs,
            "heldout_docs": self.heldout_docs,
            "repaired_utf8": self.repaired_utf8,
            "images": self.images,
            "clips": self.clips,
            "dropped": dict(self.dropped),
            "tokens": {"input": self.tokens_in, "output": self.tokens_out, "dropped": dict(self.dropped_tokens)},
            "balance_ok": self.input_docs + self.split_added == self.output_docs + sum(self.dropped.values()),
        }


class Tally:
    """Counters of a prepare run, and samples of dropped documents for ``dropped_samples.jsonl``."""

    def __init__(self, edges: list[int], samples_per_reason: int, max_errors: int = 100):
        self.sources: dict[str, SourceTally] = {}
        self.languages: Counter = Counter()
        self.edges = np.asarray(edges + [np.iinfo(np.int64).max], np.int64)
        self.hist_in = np.zeros(len(edges), np.int64)
        self.hist_out = np.zeros(len(edges), np.int64)
        self.errors: list[str] = []  # "file:line: reason" of bad records (first max_errors)
        self.n_errors = 0
        self.max_errors, self.samples_per_reason = max_errors, samples_per_reason
        self.samples: dict[str, list[dict]] = {}
        self.media_events: Counter = Counter()  # media_files' conversions (image_resized, audio_resampled, ...)

    def source(self, name: str) -> SourceTally:
        return self.sources.setdefault(name, SourceTally())

    def length_in(self, n: int) -> None:
        self.hist_in[np.searchsorted(self.edges, n, side="right") - 1] += 1

    def keep(self, source: str, n_tokens: int, lang: str, heldout: bool, media=()) -> None:
        t = self.source(source)
        t.images += "image" in media
        t.clips += "audio" in media
        t.output_docs += 1
        t.tokens_out += n_tokens
        t.heldout_docs += heldout
        t.train_docs += not heldout
        self.languages[lang] += 1
        self.hist_out[np.searchsorted(self.edges, n_tokens, side="right") - 1] += 1

    def drop(self, source: str, reason: str, where: str, detail: str = "", n_tokens: int = 0, text: str = "") -> None:
        t = self.source(source)
        t.dropped[reason] += 1
        if n_tokens:
            t.dropped_tokens[reason] += n_tokens
        if reason in ERROR_REASONS:
            self.n_errors += 1
            if len(self.errors) < self.max_errors:
                self.errors.append(f"{where}: {detail}")
        kept = self.samples.setdefault(reason, [])
        if len(kept) < self.samples_per_reason:
            kept.append(
                {
                    "reason": reason,
                    "source": source,
                    "where": where,
                    "detail": detail,
                    "tokens": n_tokens,
                    "text": text[:300],
                }
            )

    def write_samples(self, path: Path) -> None:
        with path.open("w") as f:
            for reason in REASONS:
                for s in self.samples.get(reason, []):
                    f.write(json.dumps(s, ensure_ascii=False) + "\n")


def build_report(
    tally: Tally, *, weights: dict[str, float], duplicate_check: dict, seconds: dict, tokenizer: dict, config: dict
) -> dict:
    total = SourceTally()
    for t in tally.sources.values():
        for k in (
            "input_docs",
            "split_added",
            "output_docs",
            "train_docs",
            "heldout_docs",
            "repaired_utf8",
            "images",
            "clips",
            "tokens_in",
            "tokens_out",
        ):
            setattr(total, k, getattr(total, k) + getattr(t, k))
        total.dropped.update(t.dropped)
        total.dropped_tokens.update(t.dropped_tokens)
    d = total.as_dict()
    edges = [int(e) for e in tally.edges[:-1]]
    return {
        **d,
        "dropped": {r: total.dropped[r] for r in REASONS if total.dropped[r]},
        "duplicate_rate_after": duplicate_check["rate"],
        "duplicates_after": duplicate_check["duplicates"],
        "duplicate_check": duplicate_check,
        "languages": dict(tally.languages.most_common()),
        "token_length_histogram": {"edges": edges, "input": tally.hist_in.tolist(), "output": tally.hist_out.tolist()},
        "media_events": dict(tally.media_events),
        "bad_records": tally.n_errors,
        "errors": tally.errors,
        "sources": {n: {"weight": weights.get(n, 0.0), **t.as_dict()} for n, t in tally.sources.items()},
        "tokenizer": tokenizer,
        "seconds": seconds,
        "config": config,
    }


def format_table(r: dict) -> str:
    """The report's figures as a plain-text table."""
    rows = [
        f"{'source':<12} {'weight':>6} {'input':>8} {'split+':>7} {'dropped':>8} {'output':>8} "
        f"{'train':>7} {'held-out':>8} {'tokens':>11}"
    ]
    for name, s in list(r["sources"].items()) + [
        ("TOTAL", {**r, "weight": sum(x["weight"] for x in r["sources"].values())})
    ]:
        rows.append(
            f"{name:<12} {s['weight']:>6.2f} {s['input_docs']:>8} {s['split_added']:>7} "
            f"{sum(s['dropped'].values()):>8} {s['output_docs']:>8} {s['train_docs']:>7} "
            f"{s['heldout_docs']:>8} {s['tokens']['output']:>11,}"
        )
    rows.append(f"balance (input + split = output + dropped): {'ok' if r['balance_ok'] else 'VIOLATED'}")
    rows.append("")
    rows.append(f"{'dropped by reason':<20} {'docs':>8} {'tokens':>11}")
    for reason, n in r["dropped"].items():
        rows.append(f"{reason:<20} {n:>8} {r['tokens']['dropped'].get(reason, 0):>11,}")
    for reason, n in r["tokens"]["dropped"].items():
        if reason not in r["dropped"]:
            rows.append(f"{reason:<20} {'-':>8} {n:>11,}")
    if r["images"] or r["clips"]:
        events = ", ".join(f"{k} {v}" for k, v in r["media_events"].items())
        rows.append(f"media documents: {r['images']} with an image, {r['clips']} with a clip ({events or 'as given'})")
    if r["repaired_utf8"]:
        rows.append(f"{'(repaired_utf8, kept)':<20} {r['repaired_utf8']:>8}")
    rows.append("")
    langs = ", ".join(f"{k} {v}" for k, v in list(r["languages"].items())[:8])
    rows.append(f"languages (output): {langs or '-'}")
    dc = r["duplicate_check"]
    stricter = ", ".join(f"{100 * v:.3f}% at >= {k}" for k, v in dc["rate_at"].items())
    rows.append(
        f"duplicate rate after (independent MinHash pass, {dc['bands']}x{dc['rows']}, est. Jaccard >= "
        f"{dc['threshold']}): {100 * r['duplicate_rate_after']:.3f}% ({r['duplicates_after']} of "
        f"{dc.get('documents', r['output_docs'])} text documents); {stricter}"
    )
    rows.append(f"tokens: input {r['tokens']['input']:,}, output {r['tokens']['output']:,}")
    h = r["token_length_histogram"]
    peak = max(max(h["input"]), 1)
    rows.append(f"{'tokens/doc':>13} {'input':>8} {'output':>8}")
    for i, lo in enumerate(h["edges"]):
        hi = h["edges"][i + 1] - 1 if i + 1 < len(h["edges"]) else None
        label = f"{lo}-{hi}" if hi is not None else f"{lo}+"
        rows.append(f"{label:>13} {h['input'][i]:>8} {h['output'][i]:>8}  {'#' * round(30 * h['input'][i] / peak)}")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in r["seconds"].items())
    rows.append(f"time: {secs}")
    return "\n".join(rows)
