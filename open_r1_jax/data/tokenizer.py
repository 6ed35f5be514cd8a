"""Tokenizers: byte-level (default, no training) and byte-level BPE trained offline with ``tokenizers``.

Both expose ``encode(text) -> np.ndarray[int32]``, ``decode(ids) -> str``, ``vocab_size``, ``eos_id``
and ``token_bytes`` (UTF-8 bytes each token stands for, for bits-per-byte).

``python -m open_r1_jax.data.tokenizer train --config FILE [--out PATH] [key.sub=value ...]`` trains the
BPE (``data.bpe_vocab_size``) on the configured sources (``data.mixture_paths`` or ``data.sources``;
empty = the embedded corpus) and writes ``tokenizer.json`` to ``--out``, else ``data.tokenizer_path``,
else ``run.dir/tokenizer.json`` (where the trainer looks for a cached one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is end-of-document."""

    vocab_size = 257
    eos_id = 256

    def __init__(self):
        self.token_bytes = np.ones(self.vocab_size, np.int32)
        self.token_bytes[self.eos_id] = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE (``tokenizers``) with an ``<|endoftext|>`` token."""

    EOS = "<|endoftext|>"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(self.EOS)
        special = set(tok.get_added_tokens_decoder())
        # A byte-level token's string has one stand-in character per byte; decoding a lone byte >= 128
        # would give U+FFFD (3 bytes) and bits-per-byte would be wrong.
        byte_level = type(tok.decoder).__name__ == "ByteLevel"
        size = lambda i: len(tok.id_to_token(i)) if byte_level else len(tok.decode([i]).encode("utf-8"))
        self.token_bytes = np.array([0 if i in special else size(i) for i in range(self.vocab_size)], np.int32)

    @classmethod
    def train(cls, texts, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[cls.EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self.tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def tokenizer_file(path: Path) -> Path | None:
    """The nearest ``tokenizer.json`` in ``path`` (a run, or a checkpoint / export inside one) or up to
    three folders above it; None means the byte tokenizer."""
    path = Path(path)
    return next((d / "tokenizer.json" for d in (path, *path.parents[:3]) if (d / "tokenizer.json").is_file()), None)


def tokenizer_for(path: Path):
    """The tokenizer a run (or checkpoint / export inside it) was trained with (``tokenizer_file``)."""
    found = tokenizer_file(path)
    return BPETokenizer.load(found) if found else ByteTokenizer()


def build_tokenizer(kind: str, texts: list[str], vocab_size: int, cache: Path | None):
    """Byte tokenizer, or a BPE loaded from ``cache`` if present, else trained on ``texts`` and cached."""
    if kind == "byte":
        return ByteTokenizer()
    if cache is not None and cache.is_file():
        return BPETokenizer.load(cache)
    tok = BPETokenizer.train(texts, vocab_size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tok.save(cache)
    return tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_r1_jax.data.tokenizer")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE on the configured sources")
    train.add_argument("--config", help="YAML file of overrides")
    train.add_argument("--out", help="tokenizer.json to write (default: data.tokenizer_path or run.dir)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.bpe_vocab_size=4096")
    args = parser.parse_args(argv)

    from open_r1_jax.config import ConfigError, load_config
    from open_r1_jax.data.media_files import MediaRecords
    from open_r1_jax.data.readers import iter_texts

    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out or cfg.data.tokenizer_path or Path(cfg.run.dir) / "tokenizer.json")
        t0 = time.perf_counter()
        n_docs = n_bytes = 0

        def texts():
            nonlocal n_docs, n_bytes
            for t in iter_texts(cfg.data, MediaRecords(cfg.model)):  # media records: their text
                n_docs, n_bytes = n_docs + 1, n_bytes + len(t)
                yield t

        tok = BPETokenizer.train(texts(), cfg.data.bpe_vocab_size)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if n_docs == 0:
        print("error: the configured sources hold no readable document", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(
        f"trained a {tok.vocab_size}-token BPE on {n_docs} documents ({n_bytes / 1e6:.1f} M characters) "
        f"in {time.perf_counter() - t0:.1f}s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
