"""Streaming readers of the named sources of ``prepare``: raw documents and bad records, one at a time.

A source spec is a comma-separated list of files, folders (every file ending in one of
``sources.TEXT_SUFFIXES``, recursively) and JSONL files, ``stdlib`` (the embedded corpus), or
``synthetic:NAME`` (a generated domain: ``finance`` text; ``shapes`` images and ``tones`` clips,
``synthetic:shapes:N`` for N of them). Each text file is one document named by its path; each non-blank
JSONL line is one record named ``file:line``. A JSONL record naming an ``image`` or ``audio`` file
(``data/media_files.py``) is a media document: its text (caption, or question and answer) with the
loaded arrays in ``RawDoc.media``.

Nothing is dropped here: undecodable bytes are flagged (``RawDoc.bad_utf8``, the text carries U+FFFD
where they were) for the decoding stage to repair or drop, and malformed JSONL lines and unreadable
files come out as ``BadRecord`` with ``file:line`` for the cleaner to count against the error budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from open_r1_jax.data.sources import TEXT_SUFFIXES, stdlib_files

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class RawDoc:
    source: str  # the mixture name
    where: str  # file, or file:line for a JSONL record
    text: str
    bad_utf8: bool = False  # bytes were not valid UTF-8 (replaced by U+FFFD in text)
    bad_at: int = -1  # offset of the first invalid byte (in the file, or in the JSONL line)
    media: dict | None = None  # "image" uint8 [R,R,C] / "audio" float32 [S] of a media document


@dataclass
class BadRecord:
    source: str
    where: str  # file or file:line
    reason: str  # "malformed_record" or "unreadable_file"
    detail: str


def expand(spec: str, key: str) -> list[Path | str]:
    """``spec`` (comma-separated paths, ``stdlib`` or ``synthetic:NAME``) -> files, and the synthetic
    names as they are. ``key`` names the config entry in errors."""
    from open_r1_jax.data.media_files import check_synthetic

    files: list[Path | str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "stdlib":
            files.extend(stdlib_files())
            continue
        if part.startswith("synthetic:"):
            files.append(check_synthetic(part, key))
            continue
        path = Path(part).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{key}: folder {path} holds no files ending in {sorted(TEXT_SUFFIXES)}")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{key}: {path} does not exist (expected a file, a folder or 'stdlib')")
    if not files:
        raise FileNotFoundError(f"{key}: {spec!r} names no file")
    return files


def _decode(raw: bytes) -> tuple[str, int]:
    """-> (text, offset of the first invalid byte or -1)."""
    try:
        return raw.decode("utf-8"), -1
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", errors="replace"), e.start


def _clean_surrogates(text: str) -> tuple[str, bool]:
    """JSON escapes can carry lone surrogates (``"\\ud800"``) that no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text), True


def _jsonl(source: str, path: Path, raw: bytes, key: str, media) -> Iterator[RawDoc | BadRecord]:
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        text, bad_at = _decode(line)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            yield BadRecord(source, where, "malformed_record", f"not valid JSON ({e.msg})")
            continue
        if isinstance(record, dict) and ("image" in record or "audio" in record):
            got = media(record, path.parent, where)
            if isinstance(got, str):
                yield BadRecord(source, where, "bad_media", got)
            else:
                yield RawDoc(source, where, got[0], bad_at >= 0, bad_at, media=got[1])
            continue
        if not isinstance(record, dict) or not isinstance(record.get(key), str):
            yield BadRecord(source, where, "malformed_record", f"no string field '{key}'")
            continue
        doc, surrogates = _clean_surrogates(record[key])
        yield RawDoc(source, where, doc, bad_at >= 0 or surrogates, bad_at)


def read_source(
    name: str, files: list[Path | str], text_key: str, max_bytes: float = 0.0, media=None
) -> Iterator[RawDoc | BadRecord]:
    """Documents and bad records of one named source, in file order; stops after ``max_bytes`` (0 = all).
    ``media``: a ``media_files.MediaRecords`` that loads the files media records name (and draws the
    synthetic media); without one, a media record is a bad record."""
    from open_r1_jax.data.media_files import no_media, synthetic_documents

    budget = max_bytes or float("inf")
    read = 0
    for path in files:
        if read >= budget:
            return
        if isinstance(path, str):  # synthetic:NAME
            for where, text, arrays in synthetic_documents(path, media):
                read += len(text.encode("utf-8"))
                yield RawDoc(name, where, text, media=arrays)
            continue
        try:
            raw = path.read_bytes()
        except OSError as e:
            yield BadRecord(name, str(path), "unreadable_file", f"{type(e).__name__}: {e.strerror or e}")
            continue
        read += len(raw)
        if path.suffix == ".jsonl":
            yield from _jsonl(name, path, raw, text_key, media or no_media)
        else:
            text, bad_at = _decode(raw)
            yield RawDoc(name, str(path), text, bad_at >= 0, bad_at)


@dataclass(frozen=True)
class NamedSource:
    name: str
    spec: str  # comma-separated paths or "stdlib"
    weight: float
    key: str  # the config entry, for error messages


def named_sources(d) -> list[NamedSource]:
    """The sources of ``DataConfig`` ``d``: the mixture, or one source "default" from ``d.sources``."""
    from open_r1_jax.config import ConfigError

    if not d.mixture_names:
        return [NamedSource("default", ",".join(d.sources) or "stdlib", 1.0, "data.sources")]
    if len(d.mixture_paths) != len(d.mixture_names):
        raise ConfigError(
            f"data.mixture_paths: need one path spec per name in data.mixture_names "
            f"({list(d.mixture_names)}), got {list(d.mixture_paths)}"
        )
    return [
        NamedSource(n, p, w, f"data.mixture_paths[{i}] ('{n}')")
        for i, (n, p, w) in enumerate(zip(d.mixture_names, d.mixture_paths, d.mixture_weights))
    ]


def iter_texts(d, media=None) -> Iterator[str]:
    """Every readable document text of the configured sources (for training a tokenizer)."""
    for s in named_sources(d):
        for item in read_source(s.name, expand(s.spec, s.key), d.text_key, d.max_corpus_mb * 1e6, media):
            if isinstance(item, RawDoc):
                yield item.text
