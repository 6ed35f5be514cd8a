"""ArrayRecord shards of prepared documents: the record schema, the writer and a random-access source.

Record (one cleaned document, version 1): ``uint32 little-endian header length | JSON header | arrays``.
The header holds ``{"v": 1, "meta": {...}, "arrays": {name: [dtype, shape, offset, nbytes]}}`` and
optionally ``"text"``. ``tokens`` (uint16 when the vocabulary fits, else int32; no end-of-document
token) is always present; ``image`` (e.g. uint8 [H,W,C]) and ``audio`` (e.g. float32 [N]) are reserved
array names for multimodal sources. Readers ignore arrays and meta keys they do not know, so later
fields do not break old readers.

Shards are written with ``group_size:1`` (one record per chunk) for fast random access; a
``<split>.lengths.npy`` file beside them holds every record's token count and ``<split>.media.npy``
its media flags (``MEDIA_FLAGS``), so a reader can index training chunks without reading the records.

A record with media is one chunk, not several: its arrays belong to its first tokens (the adapters'
prefix, ``model/multimodal.py``), so its text is cut at ``seq_len`` (counted: ``RecordChunkSource.cut``)
and its chunk is padded to ``seq_len``; the padding is marked in ``real``, and ``pipeline`` makes it
padding (segment 0) after packing, so that no other document shares the row.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
_HEAD = struct.Struct("<I")
MEDIA_FLAGS = {"image": 1, "audio": 2}  # bits of <split>.media.npy


def encode_record(
    tokens: np.ndarray,
    meta: dict,
    text: str | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    vocab_size: int = 1 << 31,
) -> bytes:
    """One document -> bytes. ``arrays`` may add e.g. ``image`` / ``audio`` beside ``tokens``."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    named = {"tokens": np.ascontiguousarray(tokens, dtype), **(arrays or {})}
    specs, blobs, offset = {}, [], 0
    for name, arr in named.items():
        arr = np.ascontiguousarray(arr)
        specs[name] = [arr.dtype.str, list(arr.shape), offset, arr.nbytes]
        blobs.append(arr.tobytes())
        offset += arr.nbytes
    header = {"v": SCHEMA_VERSION, "meta": meta, "arrays": specs}
    if text is not None:
        header["text"] = text
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _HEAD.pack(len(head)) + head + b"".join(blobs)


def _header(record: bytes) -> tuple[dict, int]:
    (n,) = _HEAD.unpack_from(record)
    return json.loads(record[_HEAD.size : _HEAD.size + n]), _HEAD.size + n


def _array(record: bytes, spec: list, base: int) -> np.ndarray:
    dtype, shape, offset, nbytes = spec
    return np.frombuffer(record, np.dtype(dtype), nbytes // np.dtype(dtype).itemsize, base + offset).reshape(shape)


def decode_record(record: bytes) -> dict:
    """-> ``{"meta": ..., "text"?: ..., "tokens": int32 array, <other arrays>}``."""
    header, base = _header(record)
    if header.get("v", 0) > SCHEMA_VERSION:
        raise ValueError(f"record schema version {header['v']} is newer than this reader ({SCHEMA_VERSION})")
    out = {"meta": header["meta"]}
    if "text" in header:
        out["text"] = header["text"]
    for name, spec in header["arrays"].items():
        out[name] = _array(record, spec, base)
    out["tokens"] = out["tokens"].astype(np.int32)
    return out


def decode_tokens(record: bytes) -> np.ndarray:
    header, base = _header(record)
    return _array(record, header["arrays"]["tokens"], base)


class ShardWriter:
    """Writes ``<dir>/<split>-NNNNN.array_record`` files of ``per_shard`` records and the lengths file."""

    def __init__(self, directory: Path, split: str, per_shard: int):
        self.directory, self.split, self.per_shard = Path(directory), split, per_shard
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self.lengths: list[int] = []
        self.media: list[int] = []  # MEDIA_FLAGS bits per record
        self._writer = None
        self._in_shard = 0

    def write(self, record: bytes, n_tokens: int, media: int = 0) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._writer is None or self._in_shard == self.per_shard:
            self._close_shard()
            path = self.directory / f"{self.split}-{len(self.paths):05d}.array_record"
            self._writer = ArrayRecordWriter(str(path), "group_size:1")
            self.paths.append(path)
        self._writer.write(record)
        self._in_shard += 1
        self.lengths.append(n_tokens)
        self.media.append(media)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._in_shard = None, 0

    def close(self) -> dict:
        """-> the manifest entry of this split (paths relative to the directory's parent)."""
        self._close_shard()
        lengths = np.asarray(self.lengths, np.int32)
        np.save(self.directory / f"{self.split}.lengths.npy", lengths)
        media = np.asarray(self.media, np.uint8)
        np.save(self.directory / f"{self.split}.media.npy", media)
        root = self.directory.parent
        return {
            "shards": [str(p.relative_to(root)) for p in self.paths],
            "lengths": str((self.directory / f"{self.split}.lengths.npy").relative_to(root)),
            "media": str((self.directory / f"{self.split}.media.npy").relative_to(root)),
            "records": int(len(lengths)),
            "tokens": int(lengths.sum()),
            "images": int(np.count_nonzero(media & MEDIA_FLAGS["image"])),
            "clips": int(np.count_nonzero(media & MEDIA_FLAGS["audio"])),
        }


class RecordChunkSource:
    """Random access over (input, target) chunks of prepared records; the items of ``ChunkSource``.

    Each record gets an end-of-document token and is cut into chunks of at most ``seq_len + 1`` tokens
    overlapping by one, exactly as ``pipeline.ChunkSource`` cuts documents. With ``media_keys`` (the
    arrays the model reads: ``image``, ``audio``) every item also holds ``real`` (1 per token), and a
    record with media (``media`` flags) is one chunk padded to ``seq_len`` with its arrays (see the
    module docstring). Picklable for grain.
    """

    reads_files = True  # grain reads it with threads (pipeline.read_options)

    def __init__(
        self,
        paths: list[str],
        lengths: np.ndarray,
        seq_len: int,
        eos_id: int,
        media: np.ndarray | None = None,
        media_keys: tuple[str, ...] = (),
    ):
        import grain

        self.source = grain.sources.ArrayRecordDataSource([str(p) for p in paths]) if paths else []
        lengths = np.asarray(lengths, np.int64)
        if len(self.source) != len(lengths):
            raise ValueError(f"{len(self.source)} records in {paths} but {len(lengths)} lengths")
        self.media = np.zeros(len(lengths), np.uint8) if media is None or not media_keys else np.asarray(media)
        whole = self.media > 0  # media records: one chunk
        per_record = np.where(whole, 1, -(-lengths // seq_len))  # chunks of each record (n tokens + eos: n pairs)
        self.record = np.repeat(np.arange(len(lengths)), per_record)
        first = np.cumsum(per_record) - per_record  # first chunk of each record
        self.start = (np.arange(int(per_record.sum())) - np.repeat(first, per_record)) * seq_len
        self.end = np.minimum(self.start + seq_len + 1, np.repeat(lengths + 1, per_record))
        self.cut = int(np.count_nonzero(whole & (lengths > seq_len)))  # media records cut at seq_len
        self.seq_len, self.eos_id, self.media_keys = seq_len, eos_id, tuple(media_keys)

    def __len__(self) -> int:
        return len(self.record)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        r = int(self.record[i])
        rec = decode_record(self.source[r]) if self.media[r] else {"tokens": decode_tokens(self.source[r])}
        tokens = rec["tokens"]
        seq = np.empty(len(tokens) + 1, np.int32)
        seq[:-1] = tokens
        seq[-1] = self.eos_id
        seg = seq[self.start[i] : self.end[i]]
        item = {"inputs": seg[:-1], "targets": seg[1:]}
        if not self.media_keys:
            return item
        n = len(seg) - 1
        media = {k: rec.get(k) for k in self.media_keys}  # None: absent (every item has every key, for grain)
        if not self.media[r]:
            return {**item, "real": np.ones(n, np.int32), **media}
        pad = lambda x: np.pad(x, (0, self.seq_len - n))  # noqa: E731
        real = pad(np.ones(n, np.int32))
        return {"inputs": pad(item["inputs"]), "targets": pad(item["targets"]), "real": real, **media}

    @property
    def n_target_tokens(self) -> int:
        return int(np.sum(self.end - self.start - 1))
