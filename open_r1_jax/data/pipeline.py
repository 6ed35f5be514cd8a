"""The grain input pipeline: documents -> tokens -> chunks -> shuffle -> pack -> batch.

Every document is tokenised once (with an end-of-document token), then cut into chunks of at most
``seq_len + 1`` tokens that overlap by one, so each chunk gives ``seq_len`` (input, target) pairs.
Chunks are shuffled each epoch (grain ``MapDataset.shuffle().repeat()``), sharded by process, and
packed first-fit into rows of ``seq_len`` (grain ``FirstFitPackIterDataset``), which yields segment ids
(0 = padding) and per-document positions. A batch is a dict of int32 arrays [B,T]:
``inputs``, ``targets``, ``positions``, ``segment_ids`` (loss mask = segment_ids > 0).
The iterator's state (``get_state()``) is a small dict that checkpoints save for exact resume.
"""
from __future__ import annotations

from dataclasses import dataclass

import grain
import grain.experimental as gexp
import jax
import numpy as np
from tqdm import tqdm


class ChunkSource:
    """Random access over (input, target) chunks of tokenised documents. Picklable for grain."""

    def __init__(self, docs: list[np.ndarray], seq_len: int, eos_id: int):
        lengths = np.array([len(d) + 1 for d in docs], np.int64)
        self.tokens = np.empty(int(lengths.sum()), np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        starts, ends = [], []
        for i, d in enumerate(docs):
            o = offsets[i]
            self.tokens[o:o + len(d)] = d
            self.tokens[o + len(d)] = eos_id
            s = np.arange(o, offsets[i + 1] - 1, seq_len)
            starts.append(s)
            ends.append(np.minimum(s + seq_len + 1, offsets[i + 1]))
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        seg = self.tokens[self.starts[i]:self.ends[i]]
        return {"inputs": seg[:-1], "targets": seg[1:]}

    @property
    def n_target_tokens(self) -> int:
        return int(np.sum(self.ends - self.starts - 1))


def tokenize(docs: list[str], tokenizer, desc: str, progress: bool = True) -> list[np.ndarray]:
    if hasattr(tokenizer, "encode_batch"):
        out = []
        for i in tqdm(range(0, len(docs), 256), desc=desc, disable=not progress, leave=False):
            out.extend(tokenizer.encode_batch(docs[i:i + 256]))
        return out
    return [tokenizer.encode(d) for d in tqdm(docs, desc=desc, disable=not progress, leave=False)]


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": packed["inputs"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "positions": packed["inputs_positions"].astype(np.int32),
        "segment_ids": packed["inputs_segment_ids"].astype(np.int32),
    }


@dataclass(frozen=True)
class PipelineSpec:
    seq_len: int
    batch: int  # rows per process per step
    seed: int
    packing_bins: int
    train: bool  # shuffle + repeat forever; else one ordered pass


def make_dataset(source: ChunkSource, spec: PipelineSpec) -> grain.IterDataset:
    if len(source) == 0:
        raise ValueError("the data source has no chunk with at least one (input, target) pair")
    ds = grain.MapDataset.source(source)
    if jax.process_count() > 1:
        ds = ds[jax.process_index()::jax.process_count()]  # each process reads only its share
    if spec.train:
        ds = ds.seed(spec.seed).shuffle().repeat()
    packed = gexp.FirstFitPackIterDataset(
        ds.to_iter_dataset(), length_struct={"inputs": spec.seq_len, "targets": spec.seq_len},
        num_packing_bins=spec.packing_bins, shuffle_bins=spec.train, seed=spec.seed)
    return packed.batch(spec.batch, drop_remainder=spec.train).map(_to_batch)
