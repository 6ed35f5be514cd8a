"""``python -m open_r1_jax.data.prepare --config FILE --out DIR [key.sub=value ...] [--overwrite]``

Reads the named sources of ``data`` (``mixture_names`` / ``mixture_paths`` / ``mixture_weights``, or
one source "default" from ``data.sources``; empty = the embedded stdlib corpus), cleans them
(``data.clean``: decoding, length window, exact and MinHash near-duplicates, fastText language ID),
tokenises them and writes, into DIR:

    manifest.json                 sources, weights, shards, tokenizer (written last: marks a complete run)
    <name>/train-NNNNN.array_record, <name>/heldout-NNNNN.array_record, <name>/<split>.lengths.npy,
    <name>/<split>.media.npy      per record: 1 = has an image, 2 = has an audio clip
    tokenizer.json                (bpe only)
    report.json                   counts by stage and reason, languages, tokens, length histogram
    dropped_samples.jsonl         samples of dropped documents per reason, with file:line

The trainer reads DIR with ``data.kind=arrayrecord data.prepared_dir=DIR``.

Media: a JSONL record naming an ``image`` or ``audio`` file, and ``synthetic:shapes`` /
``synthetic:tones``, become documents whose record stores the arrays beside the tokens
(``data/media_files.py``), at the config's ``model.vision`` / ``model.audio`` settings (in the manifest:
the training model must share them). Bad media files are counted as ``bad_media`` with ``file:line``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from open_r1_jax.config import Config, ConfigError, to_dict
from open_r1_jax.data.clean import Cleaner
from open_r1_jax.data.media_files import MediaRecords, media_settings
from open_r1_jax.data.minhash import DatasketchDuplicateCounter
from open_r1_jax.data.readers import expand, iter_texts, named_sources, read_source
from open_r1_jax.data.report import Tally, build_report, format_table, histogram_edges
from open_r1_jax.data.shards import MEDIA_FLAGS, ShardWriter, encode_record
from open_r1_jax.data.sources import is_heldout
from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer

log = logging.getLogger("open_r1_jax")
MARKER = ".open_r1_jax_prepare"  # identifies a directory that prepare may overwrite
BATCH = 256  # documents cleaned together (tokeniser and MinHash batches)


class PrepareError(RuntimeError):
    """The run could not produce usable shards (error budget exceeded, empty source, ...)."""


def claim_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing one is replaced only with ``overwrite`` and only if prepare made it."""
    if out.exists():
        if not overwrite:
            raise PrepareError(f"output directory {out} exists; pass --overwrite to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists()):
            raise PrepareError(f"--overwrite: {out} is not an output of prepare (no {MARKER}); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by python -m open_r1_jax.data.prepare\n")


def _tokenizer(d, out: Path, media: MediaRecords):
    if d.tokenizer == "byte":
        tok = ByteTokenizer()
        return tok, {"kind": "byte", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}
    if d.tokenizer_path:
        if not Path(d.tokenizer_path).is_file():
            raise FileNotFoundError(f"data.tokenizer_path: {d.tokenizer_path} does not exist")
        tok = BPETokenizer.load(d.tokenizer_path)
    else:
        log.info("training a %d-token BPE tokenizer on the sources", d.bpe_vocab_size)
        tok = BPETokenizer.train(iter_texts(d, MediaRecords(media.cfg)), d.bpe_vocab_size)
    tok.save(out / "tokenizer.json")
    return tok, {"kind": "bpe", "file": "tokenizer.json", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _SourceWriter:
    """Train / held-out shards of one source. Writes one document behind, so that a source too small for
    the hash split still holds out its last document (as ``sources.load_documents`` does)."""

    def __init__(self, out: Path, name: str, heldout_percent: float, per_shard: int, vocab_size: int, tally: Tally):
        self.name, self.percent, self.vocab_size, self.tally = name, heldout_percent, vocab_size, tally
        self.writers = {split: ShardWriter(out / name, split, per_shard) for split in ("train", "heldout")}
        self.last = None

    def _write(self, u, held: bool) -> None:
        meta = {"source": self.name, "doc": u.where, "lang": u.lang, "lang_score": round(u.lang_score, 4)}
        media = u.media or {}
        self.writers["heldout" if held else "train"].write(
            encode_record(u.tokens, meta, arrays=media, vocab_size=self.vocab_size),
            len(u.tokens),
            sum(MEDIA_FLAGS[k] for k in media),
        )
        self.tally.keep(self.name, len(u.tokens), u.lang, held, media)

    def add(self, u) -> None:
        if self.last is not None:
            self._write(self.last, is_heldout(self.last.doc, self.percent))
        self.last = u

    def close(self) -> dict:
        if self.last is not None:
            t = self.tally.source(self.name)
            no_heldout = self.percent > 0 and t.heldout_docs == 0 and t.train_docs > 0
            self._write(self.last, no_heldout or is_heldout(self.last.doc, self.percent))
        return {split: w.close() for split, w in self.writers.items()}


def prepare(cfg: Config, out: str | Path, overwrite: bool = False) -> dict:
    """Clean, tokenise and shard the configured sources into ``out``; -> the report (also report.json)."""
    d, c, out = cfg.data, cfg.data.clean, Path(out)
    sources = named_sources(d)
    files = {s.name: expand(s.spec, s.key) for s in sources}  # missing paths fail before any work
    claim_output(out, overwrite)
    t_start = time.perf_counter()
    media = MediaRecords(cfg.model)
    tok, tok_info = _tokenizer(d, out, media)
    t_tok = time.perf_counter() - t_start
    tally = Tally(histogram_edges(c.min_tokens, c.max_tokens), c.samples_per_reason)
    cleaner = Cleaner(c, tok, tally)
    checker = DatasketchDuplicateCounter(
        c.check_bands, c.check_rows, c.minhash_ngram, c.check_threshold, seed=c.minhash_seed + 7919
    )
    manifest, t_check, empty = {}, 0.0, []
    for s in sources:
        writer = _SourceWriter(out, s.name, d.heldout_percent, d.records_per_shard, tok.vocab_size, tally)
        pbar = tqdm(desc=f"prepare {s.name}", unit="doc", disable=not cfg.run.progress, leave=False)
        n_read = 0
        docs = read_source(s.name, files[s.name], d.text_key, d.max_corpus_mb * 1e6, media)
        for batch in _batches(docs, BATCH):
            n_read += len(batch)
            kept = cleaner.process(batch)
            for u in kept:
                writer.add(u)
            t0 = time.perf_counter()
            checker.add([u.text for u in kept if u.media is None])  # captions: see clean.py
            t_check += time.perf_counter() - t0
            pbar.update(len(batch))
        pbar.close()
        if n_read == 0:
            raise PrepareError(f"{s.key}: no documents in {s.spec!r}")
        manifest[s.name] = {"weight": s.weight, "spec": s.spec, **writer.close()}
        if tally.source(s.name).output_docs == 0:
            empty.append(s.name)
    seconds = {
        "tokenizer": t_tok,
        **cleaner.seconds,
        "duplicate_check": t_check,
        "total": time.perf_counter() - t_start,
    }
    tally.media_events.update(media.events)
    report = build_report(
        tally,
        weights={s.name: s.weight for s in sources},
        duplicate_check={
            "rate": checker.rate,
            "duplicates": checker.duplicates,
            "documents": checker.docs,  # text documents (media documents are not checked: clean.py)
            "rate_at": checker.rates_at(),
            "bands": c.check_bands,
            "rows": c.check_rows,
            "threshold": c.check_threshold,
        },
        seconds=seconds,
        tokenizer=tok_info,
        config=to_dict(d),
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    tally.write_samples(out / "dropped_samples.jsonl")
    _check(report, c.max_bad_fraction, empty, out)
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "format": "open_r1_jax.prepared",
                "version": 1,
                "tokenizer": tok_info,
                "media": media_settings(cfg.model),
                "sources": manifest,
            },
            indent=2,
        )
    )
    return report


def _check(report: dict, max_bad_fraction: float, empty: list[str], out: Path) -> None:
    bad, total = report["bad_records"], report["input_docs"]
    for e in report["errors"][:10]:
        log.warning("bad record: %s", e)
    if not all(s["balance_ok"] for s in report["sources"].values()):
        raise PrepareError(f"internal error: document counts do not balance (see {out / 'report.json'})")
    if bad > max_bad_fraction * total:
        raise PrepareError(
            f"{bad} of {total} records were malformed or unreadable, more than data.clean.max_bad_fraction "
            f"({max_bad_fraction}); first: {'; '.join(report['errors'][:3])} (all in {out / 'report.json'})"
        )
    if empty:
        raise PrepareError(
            f"every document of source(s) {empty} was dropped; see {out / 'report.json'} "
            f"and {out / 'dropped_samples.jsonl'} for why"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m open_r1_jax.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file (configs/data/stdlib.yaml, configs/data/mixture.yaml)")
    parser.add_argument("--out", required=True, help="output directory (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of prepare")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_corpus_mb=5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from open_r1_jax.config import load_config

    try:
        report = prepare(load_config(args.config, args.overrides), args.out, args.overwrite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"wrote {args.out} (report.json, dropped_samples.jsonl, manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
