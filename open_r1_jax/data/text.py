"""Text data of the language-modelling stages: corpus files or prepared shards -> tokenizer, an
endless packed training iterator, and the held-out chunks.

- ``data.kind: corpus``: documents from ``data.sources`` (the embedded stdlib corpus by default),
  split train / held-out by ``data/sources.py``, tokenised at start (``data.tokenizer``).
- ``data.kind: arrayrecord``: shards written by ``python -m open_r1_jax.data.prepare``, mixed by
  their weights (``data/mixture.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from open_r1_jax.config import Config, ConfigError
from open_r1_jax.data.mixture import MixtureReport, MixtureStats, open_prepared
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset, make_mixture_dataset, tokenize
from open_r1_jax.data.sources import load_documents
from open_r1_jax.data.tokenizer import build_tokenizer

log = logging.getLogger("open_r1_jax")


@dataclass
class TextData:
    tokenizer: object
    train_iter: object  # grain iterator of packed batches (get_state/set_state)
    eval_source: ChunkSource  # or shards.RecordChunkSource (prepared data): the same items
    spec: PipelineSpec  # of the training stream (rows per process, seq_len, seed)


def _check_vocab(cfg: Config, tok, what: str) -> None:
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the vocabulary of {what} ({tok.vocab_size})"
        )


def build_text_data(cfg: Config, run_dir: Path) -> TextData:
    spec = PipelineSpec(
        cfg.train.seq_len,
        cfg.train.global_batch // jax.process_count(),
        cfg.train.seed,
        cfg.data.packing_bins,
        train=True,
        num_shards=cfg.data.shards,
    )
    if cfg.data.kind == "arrayrecord":
        prep = open_prepared(cfg.data, cfg.train.seq_len, cfg.model)
        _check_vocab(cfg, prep.tokenizer, f"the tokenizer in {cfg.data.prepared_dir}")
        spec = dataclasses.replace(spec, media=prep.media)
        cut = sum(s.cut for s in prep.train_sources)
        if prep.media:
            log.info(
                "data: rows carry %s; a media record fills its row (not packed)%s",
                " and ".join(name for name, _, _ in prep.media),
                f"; {cut} training media records are longer than train.seq_len and cut" if cut else "",
            )
        log.info(
            "data: prepared shards in %s: %s; %d held-out tokens",
            cfg.data.prepared_dir,
            ", ".join(
                f"{n} (weight {w:.3f}, {s.n_target_tokens} tokens)"
                for n, w, s in zip(prep.names, prep.weights, prep.train_sources)
            ),
            prep.eval_source.n_target_tokens,
        )
        train_ds = MixtureStats(
            make_mixture_dataset(prep.train_sources, prep.weights, spec),
            prep.names,
            prep.weights,
            cfg.train.log_every,
            MixtureReport(run_dir / "data_mixture.json", log),
        )
        return TextData(prep.tokenizer, iter(train_ds), prep.eval_source, spec)
    train_docs, heldout_docs, report = load_documents(cfg.data)
    log.info("data: %s; %d train / %d held-out documents", report.summary(), len(train_docs), len(heldout_docs))
    for bad in report.bad_records[:5]:
        log.warning("data: skipped %s", bad)
    tok = build_tokenizer(
        cfg.data.tokenizer, [d.text for d in train_docs], cfg.data.bpe_vocab_size, run_dir / "tokenizer.json"
    )
    _check_vocab(cfg, tok, f"the {cfg.data.tokenizer} tokenizer")
    progress = cfg.run.progress
    train_src = ChunkSource(
        tokenize([d.text for d in train_docs], tok, "tokenize train", progress), cfg.train.seq_len, tok.eos_id
    )
    eval_src = ChunkSource(
        tokenize([d.text for d in heldout_docs], tok, "tokenize held-out", progress), cfg.train.seq_len, tok.eos_id
    )
    counts = np.bincount(train_src.tokens)
    p = counts[counts > 0] / counts.sum()
    log.info(
        "data: %d train tokens in %d chunks, %d held-out tokens; unigram entropy of the train tokens "
        "%.3f nats (a loss far below it means the model uses context)",
        train_src.n_target_tokens,
        len(train_src),
        eval_src.n_target_tokens,
        float(-(p * np.log(p)).sum()),
    )
    return TextData(tok, iter(make_dataset(train_src, spec)), eval_src, spec)
