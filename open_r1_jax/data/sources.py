"""Document sources: the embedded default corpus, text files, folders, JSONL files, synthetic domains.

The embedded corpus is the Python standard library's source (``sysconfig``'s ``stdlib`` path,
without ``site-packages``): present wherever Python is, so the main job needs no download.
``synthetic:NAME`` names a generated domain (``data/synthetic/``); ``read_documents`` (evaluation
files) reads only its held-out documents.

Held-out text never overlaps training text. With ``data.eval_sources`` the held-out documents are
exactly those files (every document of ``data.sources`` is training data). Otherwise each source (each
entry of ``data.sources``; the embedded corpus counts as one) is split on its own:

* by a hash of the document name, so the split does not depend on the order in which files are listed;
* a source with too few documents for that (the hash split leaves one side empty) is split by its
  tail, as nanoGPT splits its corpus 90/10: the last ``heldout_percent`` % of the source's characters
  are held out. The document holding the cut becomes two documents, ``name[:N]`` (train) and
  ``name[N:]`` (held-out), so no held-out text is also trained on -- a one-file corpus used to be
  trained on in full while its only file was also the held-out set.

``heldout_percent`` 0 holds nothing out. Bad records are never dropped silently: undecodable bytes are
replaced and counted, malformed JSONL lines are counted and reported with ``file:line``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    tail_split: list[str] = field(default_factory=list)  # sources too small for the hash split: tail held out

    def summary(self) -> str:
        s = f"{self.documents} documents from {self.files} files, {self.bytes / 1e6:.1f} MB"
        if self.decode_errors:
            s += f", {self.decode_errors} with invalid UTF-8 (replaced)"
        if self.bad_records:
            s += f", {len(self.bad_records)} malformed records skipped (first: {self.bad_records[0]})"
        if self.tail_split:
            s += f", held out the tail of {len(self.tail_split)} small source(s) ({', '.join(self.tail_split[:3])})"
        return s


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted. ``os.walk`` prunes ``site-packages`` (and bytecode
    folders) before descending: the installed packages (torch, jax, ...) are tens of thousands of files,
    and walking them to drop them afterwards took ~4 s of every run on the default corpus."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "__pycache__")]
        files.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return sorted(files)


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


def _expand(source: str, what: str = "data.sources") -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{what}: folder {path} holds no files ending in {sorted(TEXT_SUFFIXES)}")
        return files
    raise FileNotFoundError(f"{what}: {path} does not exist (expected a file or a folder)")


def _read_files(files: list[Path], cfg: DataConfig, report: SourceReport, budget: float) -> list[Document]:
    docs: list[Document] = []
    for path in files:
        if report.bytes >= budget:
            break
        report.files += 1
        new = (
            _read_jsonl(path, cfg.text_key, report)
            if path.suffix == ".jsonl"
            else [Document(str(path), _read_text(path, report))]
        )
        for d in new:
            if d.text:
                docs.append(d)
                report.bytes += len(d.text.encode("utf-8"))
    report.documents += len(docs)
    return docs


def read_documents(
    specs: list[str], text_key: str = "text", what: str = "files"
) -> tuple[list[Document], SourceReport]:
    """Every document of some files / folders / JSONL files (no split), with the report of what was read."""
    from open_r1_jax.data import synthetic

    report = SourceReport()
    files = [p for s in specs if not synthetic.is_synthetic(s) for p in _expand(s, what)]
    docs = _read_files(files, DataConfig(text_key=text_key), report, float("inf"))
    for s in filter(synthetic.is_synthetic, specs):  # held-out documents only: evaluation never scores trained text
        docs += _count(split_source(synthetic.documents(s, what), DataConfig.heldout_percent)[1], report)
    return docs, report


def _count(docs: list[Document], report: SourceReport) -> list[Document]:
    report.documents += len(docs)
    report.bytes += sum(len(d.text.encode()) for d in docs)
    return docs


def tail_split(docs: list[Document], percent: float) -> tuple[list[Document], list[Document]]:
    """-> (train, held-out): the last ``percent`` % of the documents' characters (in order) are held out,
    at least one character on each side; the document holding the cut is split into ``name[:N]`` and
    ``name[N:]``. ``percent`` 0, or a single character in all: nothing is held out."""
    total = sum(len(d.text) for d in docs)
    if percent <= 0 or total < 2:
        return list(docs), []
    cut = total - min(max(round(total * percent / 100), 1), total - 1)  # chars [cut:] are held out
    train: list[Document] = []
    heldout: list[Document] = []
    start = 0
    for d in docs:
        end = start + len(d.text)
        if end <= cut:
            train.append(d)
        elif start >= cut:
            heldout.append(d)
        else:
            k = cut - start
            train.append(Document(f"{d.name}[:{k}]", d.text[:k]))
            heldout.append(Document(f"{d.name}[{k}:]", d.text[k:]))
        start = end
    return train, heldout


def split_source(docs: list[Document], percent: float) -> tuple[list[Document], list[Document], bool]:
    """-> (train, held-out, split by tail?) for the documents of one source: by the hash of their names,
    or by ``tail_split`` when the hash split would leave one side empty."""
    train = [d for d in docs if not is_heldout(d.name, percent)]
    heldout = [d for d in docs if is_heldout(d.name, percent)]
    if train and (heldout or percent <= 0):
        return train, heldout, False
    return (*tail_split(docs, percent), True)


def load_documents(cfg: DataConfig) -> tuple[list[Document], list[Document], SourceReport]:
    """-> (train documents, held-out documents, report). Empty ``cfg.sources``: the stdlib corpus.
    ``cfg.eval_sources`` set: held-out = its documents, train = all of the sources' documents; else each
    source is split on its own (see the module docstring). ``max_corpus_mb`` limits the training sources."""
    from open_r1_jax.data import synthetic

    report = SourceReport()
    groups = (
        [("stdlib", stdlib_files())]
        if not cfg.sources
        else [
            (s, None if synthetic.is_synthetic(s) else stdlib_files() if s == "stdlib" else _expand(s))
            for s in cfg.sources
        ]
    )  # missing paths fail before any reading
    eval_files = [p for s in cfg.eval_sources for p in _expand(s, "data.eval_sources")]
    if eval_files:
        trained = {p.resolve() for _, files in groups for p in files or ()}
        both = [str(p) for p in eval_files if p.resolve() in trained]
        if both:
            raise ValueError(
                f"data.eval_sources: {len(both)} file(s) also in data.sources, e.g. {both[0]} "
                "(held-out text would be trained on)"
            )
    budget = cfg.max_corpus_mb * 1e6 if cfg.max_corpus_mb else float("inf")

    def read(name, files):  # a synthetic domain is generated whole (it is small), files within the budget
        return _count(synthetic.documents(name), report) if files is None else _read_files(files, cfg, report, budget)

    per_source = [(name, read(name, files)) for name, files in groups]
    if not any(docs for _, docs in per_source):
        raise ValueError(f"data.sources: no non-empty documents found in {list(cfg.sources) or 'stdlib'}")
    if cfg.eval_sources:
        heldout = _read_files(eval_files, cfg, report, float("inf"))
        if not heldout:
            raise ValueError(f"data.eval_sources: no non-empty documents found in {list(cfg.eval_sources)}")
        return [d for _, docs in per_source for d in docs], heldout, report
    train, heldout = [], []
    for name, docs in per_source:
        t, h, by_tail = split_source(docs, cfg.heldout_percent)
        train += t
        heldout += h
        if by_tail and h:
            report.tail_split.append(name)
    return train, heldout, report
