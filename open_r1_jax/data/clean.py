"""The cleaning stages of ``prepare``, in order: decoding, length window, exact and near duplicates, language.

Each stage takes the documents that the previous one kept and counts what it drops, by reason, in a
``report.Tally`` (with samples of the dropped text and where it came from). Stages work on batches so
that tokenisation and MinHash run vectorised; duplicates are found against every earlier document of
the run (all sources, both splits: a held-out document never duplicates a training one).

Length window (the seed's 512 +- 64 tokens by default): shorter documents are dropped; a longer one is
split into the fewest windows that each fit in [min, max] (near-equal sizes); when no such split exists
(e.g. 600 tokens for [448, 576]) it is cut into ``n // max`` windows of ``max`` tokens and the rest is
dropped, counted in ``tokens.dropped.split_tail``. ``long_docs: truncate`` keeps the first ``max``
tokens; ``drop`` drops the document.

A media document (``RawDoc.media``: an image or a clip with its caption or question and answer) is
judged by what it is: its text is a few words that describe the media, so the length window, the
near-duplicate search and the language ID, which judge prose, do not apply. It is kept whole (cut at
``max_tokens``, counted in ``tokens.dropped.truncated``; dropped as ``too_short`` only when empty), and it
is an exact duplicate only when both its text and its arrays repeat an earlier document's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from open_r1_jax.config import CleanConfig
from open_r1_jax.data.langid import LanguageIdentifier
from open_r1_jax.data.minhash import MinHasher, NearDuplicateIndex, normalized_text
from open_r1_jax.data.readers import BadRecord, RawDoc
from open_r1_jax.data.report import Tally


@dataclass
class Unit:
    """A document (or a window of one) on its way through the stages."""

    source: str
    where: str  # file or file:line, plus "#t<start>-<end>" (token offsets) for a window of a split document
    doc: str  # the input document's name (decides the held-out split)
    tokens: np.ndarray
    text: str
    lang: str = "und"
    lang_score: float = 0.0
    media: dict | None = None  # "image" / "audio" arrays of a media document


def length_windows(n: int, lo: int, hi: int, mode: str) -> list[tuple[int, int]]:
    """Token ranges [start, end) to keep of an n-token document under the window [lo, hi]."""
    if n < lo:
        return []
    if n <= hi:
        return [(0, n)]
    if mode == "drop":
        return []
    if mode == "truncate":
        return [(0, hi)]
    k = -(-n // hi)  # fewest windows of at most hi tokens
    if n // k >= lo:  # near-equal sizes n // k or n // k + 1, all in [lo, hi]
        bounds = [i * n // k for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:]))
    return [(i * hi, (i + 1) * hi) for i in range(n // hi)]


def _text_of(tokenizer, tokens: np.ndarray) -> str:
    if hasattr(tokenizer, "tok"):  # BPE
        return tokenizer.decode(tokens)
    return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")  # byte tokens < 256


class Cleaner:
    """``process(batch) -> kept units``; counts everything in ``tally``."""

    def __init__(self, cfg: CleanConfig, tokenizer, tally: Tally):
        self.cfg, self.tok, self.tally = cfg, tokenizer, tally
        self.seen: dict[bytes, str] = {}  # exact-duplicate key -> first document
        self.hasher = MinHasher(cfg.minhash_bands * cfg.minhash_rows, cfg.minhash_ngram, cfg.minhash_seed)
        self.index = NearDuplicateIndex(cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_threshold, cfg.minhash_seed)
        self.langid = LanguageIdentifier() if cfg.langid else None
        self.seconds: dict[str, float] = {}  # per stage

    def process(self, batch: list[RawDoc | BadRecord]) -> list[Unit]:
        stages = [("decode", self._decode), ("tokenize_length", self._length)]
        stages += [("exact_dedup", self._exact)] if self.cfg.exact_dedup else []
        stages += [("near_dedup", self._near)] if self.cfg.near_dedup else []
        stages += [("langid", self._language)] if self.langid is not None else []
        items = batch
        for name, stage in stages:
            t0 = time.perf_counter()
            items = stage(items)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return items

    def _decode(self, batch: list[RawDoc | BadRecord]) -> list[RawDoc]:
        kept = []
        for item in batch:
            self.tally.source(item.source).input_docs += 1
            if isinstance(item, BadRecord):
                self.tally.drop(item.source, item.reason, item.where, item.detail)
            elif item.bad_utf8 and self.cfg.bad_utf8 == "drop":
                detail = f"invalid UTF-8 at byte {item.bad_at}" if item.bad_at >= 0 else "lone surrogate"
                self.tally.drop(item.source, "bad_utf8", item.where, detail, text=item.text)
            else:
                self.tally.source(item.source).repaired_utf8 += item.bad_utf8
                kept.append(item)
        return kept

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        if hasattr(self.tok, "encode_batch"):
            return self.tok.encode_batch(texts)
        return [self.tok.encode(t) for t in texts]

    def _length(self, docs: list[RawDoc]) -> list[Unit]:
        c, units = self.cfg, []
        for doc, tokens in zip(docs, self._tokenize([d.text for d in docs])):
            n = len(tokens)
            t = self.tally.source(doc.source)
            t.tokens_in += n
            self.tally.length_in(n)
            if doc.media is not None:  # kept whole: see the module docstring
                if n == 0:
                    self.tally.drop(doc.source, "too_short", doc.where, "media document without text", 0, doc.text)
                    continue
                if n > c.max_tokens:
                    t.dropped_tokens["truncated"] += n - c.max_tokens
                text = doc.text if n <= c.max_tokens else _text_of(self.tok, tokens[: c.max_tokens])
                units.append(Unit(doc.source, doc.where, doc.where, tokens[: c.max_tokens], text, media=doc.media))
                continue
            spans = length_windows(n, c.min_tokens, c.max_tokens, c.long_docs)
            if not spans:
                reason = "too_short" if n < c.min_tokens else "too_long"
                self.tally.drop(doc.source, reason, doc.where, f"{n} tokens", n, doc.text)
                continue
            cut = n - sum(e - s for s, e in spans)
            if cut:
                t.dropped_tokens["truncated" if c.long_docs == "truncate" else "split_tail"] += cut
            t.split_added += len(spans) - 1
            if len(spans) == 1 and spans[0] == (0, n):
                units.append(Unit(doc.source, doc.where, doc.where, tokens, doc.text))
                continue
            for s, e in spans:
                units.append(
                    Unit(doc.source, f"{doc.where}#t{s}-{e}", doc.where, tokens[s:e], _text_of(self.tok, tokens[s:e]))
                )
        return units

    def _exact(self, units: list[Unit]) -> list[Unit]:
        kept = []
        for u in units:
            h = hashlib.blake2b(normalized_text(u.text).encode("utf-8"), digest_size=16)
            for name, arr in sorted((u.media or {}).items()):
                h.update(name.encode() + np.ascontiguousarray(arr).tobytes())
            key = h.digest()
            if key in self.seen:
                self.tally.drop(
                    u.source,
                    "exact_duplicate",
                    u.where,
                    f"same normalised text{' and media' if u.media else ''} as {self.seen[key]}",
                    len(u.tokens),
                    u.text,
                )
            else:
                self.seen[key] = u.where
                kept.append(u)
        return kept

    def _near(self, units: list[Unit]) -> list[Unit]:
        if not units:
            return units
        media = [u for u in units if u.media is not None]
        units = [u for u in units if u.media is None]
        if not units:
            return media
        kept = []
        for u, sig in zip(units, self.hasher.signatures([u.text for u in units])):
            dup = self.index.check_and_add(u.where, sig)
            if dup is not None:
                self.tally.drop(
                    u.source,
                    "near_duplicate",
                    u.where,
                    f"estimated Jaccard {dup[1]:.2f} with {dup[0]}",
                    len(u.tokens),
                    u.text,
                )
            else:
                kept.append(u)
        return kept + media

    def _language(self, units: list[Unit]) -> list[Unit]:
        c, kept = self.cfg, []
        for u in units:
            if u.media is not None:
                kept.append(u)
                continue
            u.lang, u.lang_score = self.langid.identify(u.text)
            detail = f"{u.lang} {u.lang_score:.2f}"
            if c.languages and u.lang not in c.languages:
                self.tally.drop(u.source, "language", u.where, detail, len(u.tokens), u.text)
            elif u.lang_score < c.min_lang_score:
                self.tally.drop(u.source, "low_lang_score", u.where, detail, len(u.tokens), u.text)
            else:
                kept.append(u)
        return kept
