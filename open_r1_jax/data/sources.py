"""Document sources: the embedded default corpus, text files, folders and JSONL files.

The embedded corpus is the Python standard library's source (``sysconfig``'s ``stdlib`` path,
without ``site-packages``): present wherever Python is, so the main job needs no download.
Documents are split into train / held-out deterministically by a hash of their name, so the split
does not depend on the order in which files are listed.

Bad records are never dropped silently: undecodable bytes are replaced and counted, malformed JSONL
lines are counted and reported with ``file:line``.
"""
from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from open_r1_jax.config import DataConfig

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".jsonl"}


@dataclass
class Document:
    name: str  # file, or file:line for JSONL records
    text: str


@dataclass
class SourceReport:
    files: int = 0
    documents: int = 0
    bytes: int = 0
    decode_errors: int = 0  # documents with bytes that were not valid UTF-8 (replaced by U+FFFD)
    bad_records: list[str] = field(default_factory=list)  # "file:line: reason"

    def summary(self) -> str:
        s = f"{self.documents} documents from {self.files} files, {self.bytes / 1e6:.1f} MB"
        if self.decode_errors:
            s += f", {self.decode_errors} with invalid UTF-8 (replaced)"
        if self.bad_records:
            s += f", {len(self.bad_records)} malformed records skipped (first: {self.bad_records[0]})"
        return s


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)


def is_heldout(name: str, percent: float) -> bool:
    h = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "little")
    return (h % 10_000) < percent * 100


def _read_text(path: Path, report: SourceReport) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.decode_errors += 1
        return raw.decode("utf-8", errors="replace")


def _read_jsonl(path: Path, key: str, report: SourceReport) -> list[Document]:
    docs = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.decode_errors += 1
                line = raw.decode("utf-8", errors="replace")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                report.bad_records.append(f"{where}: not valid JSON ({e.msg})")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(key), str):
                report.bad_records.append(f"{where}: no string field '{key}'")
                continue
            docs.append(Document(where, record[key]))
    return docs


def _expand(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"data.sources: folder {path} holds no files ending in {sorted(TEXT_SUFFIXES)}")
        return files
    raise FileNotFoundError(f"data.sources: {path} does not exist (expected a file or a folder)")


def load_documents(cfg: DataConfig) -> tuple[list[Document], list[Document], SourceReport]:
    """-> (train documents, held-out documents, report). Empty ``cfg.sources``: the stdlib corpus."""
    report = SourceReport()
    files = stdlib_files() if not cfg.sources else [p for s in cfg.sources for p in _expand(s)]
    budget = cfg.max_corpus_mb * 1e6 if cfg.max_corpus_mb else float("inf")
    docs: list[Document] = []
    for path in files:
        if report.bytes >= budget:
            break
        report.files += 1
        new = (_read_jsonl(path, cfg.text_key, report) if path.suffix == ".jsonl"
               else [Document(str(path), _read_text(path, report))])
        for d in new:
            if d.text:
                docs.append(d)
                report.bytes += len(d.text.encode("utf-8"))
    report.documents = len(docs)
    if not docs:
        raise ValueError(f"data.sources: no non-empty documents found in {list(cfg.sources) or 'stdlib'}")
    train = [d for d in docs if not is_heldout(d.name, cfg.heldout_percent)]
    heldout = [d for d in docs if is_heldout(d.name, cfg.heldout_percent)]
    if not train or (cfg.heldout_percent > 0 and not heldout):
        # Too few documents for a hash split: keep the last document for evaluation.
        train, heldout = docs[:-1] or docs, docs[-1:]
    return train, heldout, report
