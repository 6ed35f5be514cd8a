"""The trainer's side of prepared data: open a ``prepare`` output, mix its sources, report the mix.

``open_prepared`` reads ``manifest.json``: the tokenizer, and per named source its train / held-out
shards. Weights come from the manifest (those of the prepare config), or from ``data.mixture_names``
+ ``data.mixture_weights`` of the training config when given (a source left out gets weight 0).
Training chunks of the weighted sources are mixed by ``pipeline.make_mixture_dataset``; evaluation
reads the held-out records of every source. Shards with images or clips need the model's adapter for
them, at the settings they were prepared with (``Prepared.media``: what the rows carry).

``MixtureStats`` wraps the training iterator: it removes ``source_ids`` from each batch, counts the
chunks and tokens that each source contributed (the realised proportions), reports them every
``report_every`` batches, and keeps the counts in the iterator state so a resumed run continues them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np

from open_r1_jax.config import ConfigError, DataConfig, ModelConfig
from open_r1_jax.data.shards import RecordChunkSource
from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer


@dataclass
class Prepared:
    tokenizer: object
    names: list[str]  # sources in the training mixture (weight > 0)
    weights: list[float]  # normalised
    train_sources: list[RecordChunkSource]
    eval_source: RecordChunkSource
    media: tuple = ()  # (name, shape, dtype) of the media arrays of the rows (pipeline.PipelineSpec.media)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"data.prepared_dir: {path} not found (expected the --out directory of a "
            "completed `python -m open_r1_jax.data.prepare` run)"
        )
    return json.loads(path.read_text())


def _weights(d: DataConfig, manifest: dict) -> dict[str, float]:
    available = manifest["sources"]
    if not d.mixture_names:
        return {n: float(s["weight"]) for n, s in available.items()}
    unknown = [n for n in d.mixture_names if n not in available]
    if unknown:
        raise ConfigError(f"data.mixture_names: {unknown} not in {d.prepared_dir} (it holds {sorted(available)})")
    return {n: (d.mixture_weights[d.mixture_names.index(n)] if n in d.mixture_names else 0.0) for n in available}


def _load_tokenizer(info: dict, directory: Path):
    if info["kind"] == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(directory / info["file"])


def _flags(directory: Path, split: dict) -> np.ndarray:
    """Per record media flags (manifests written before media: none)."""
    if "media" in split:
        return np.load(directory / split["media"])
    return np.zeros(split["records"], np.uint8)


def _source(directory: Path, split: dict, seq_len: int, eos_id: int, keys: tuple) -> RecordChunkSource:
    return RecordChunkSource(
        [directory / p for p in split["shards"]],
        np.load(directory / split["lengths"]),
        seq_len,
        eos_id,
        _flags(directory, split),
        keys,
    )


def media_spec(manifest: dict, model: ModelConfig, directory: Path) -> tuple:
    """The media arrays rows of these shards carry -> (name, shape, dtype) each; refuses shards whose
    media the model has no adapter for, or was prepared at other settings."""
    held = {"image": 0, "audio": 0}
    for src in manifest["sources"].values():
        for split in ("train", "heldout"):
            held["image"] += src[split].get("images", 0)
            held["audio"] += src[split].get("clips", 0)
    prepared, spec = manifest.get("media", {}), []
    if held["image"]:
        v = model.vision
        if not v.enabled:
            raise ConfigError(
                f"model.vision.enabled is false, but {directory} holds {held['image']} images; enable the "
                "image adapter to train on them, or prepare the text sources alone"
            )
        if (prepared["image_size"], prepared["channels"]) != (v.image_size, v.channels):
            raise ConfigError(
                f"model.vision.image_size / channels: {v.image_size} / {v.channels}, but the images of "
                f"{directory} were prepared at {prepared['image_size']} / {prepared['channels']}; set them so, "
                "or prepare again with this model section"
            )
        spec.append(("image", (v.image_size, v.image_size, v.channels), "uint8"))
    if held["audio"]:
        a = model.audio
        if not a.enabled:
            raise ConfigError(
                f"model.audio.enabled is false, but {directory} holds {held['audio']} audio clips; enable the "
                "audio adapter to train on them, or prepare the text sources alone"
            )
        if prepared["sample_rate"] != a.sample_rate or prepared["max_samples"] > a.max_samples:
            raise ConfigError(
                f"model.audio.sample_rate / max_samples: {a.sample_rate} / {a.max_samples}, but the clips of "
                f"{directory} were prepared at {prepared['sample_rate']} Hz, up to {prepared['max_samples']} "
                "samples; set the same rate and at least as many samples, or prepare again with this model section"
            )
        spec.append(("audio", (a.max_samples,), "float32"))
    return tuple(spec)


def open_prepared(d: DataConfig, seq_len: int, model: ModelConfig | None = None) -> Prepared:
    directory = Path(d.prepared_dir)
    manifest = read_manifest(directory)
    media = media_spec(manifest, model or ModelConfig(), directory)
    keys = tuple(name for name, _, _ in media)
    tok = _load_tokenizer(manifest["tokenizer"], directory)
    weights = _weights(d, manifest)
    names = [n for n, w in weights.items() if w > 0]
    if not names:
        raise ConfigError(f"data.mixture_weights: every source of {directory} has weight 0")
    train = []
    for n in names:
        src = _source(directory, manifest["sources"][n]["train"], seq_len, tok.eos_id, keys)
        if len(src) == 0:
            raise ConfigError(
                f"source '{n}' of {directory} has no training records but weight {weights[n]}; "
                "give it weight 0 or prepare it again"
            )
        train.append(src)
    held = [manifest["sources"][n]["heldout"] for n in manifest["sources"]]
    paths = [directory / p for h in held for p in h["shards"]]
    lengths = np.concatenate([np.load(directory / h["lengths"]) for h in held])
    flags = np.concatenate([_flags(directory, h) for h in held])
    eval_source = RecordChunkSource(paths, lengths, seq_len, tok.eos_id, flags, keys)
    if len(eval_source) == 0:
        raise ConfigError(f"{directory} has no held-out records; prepare it with data.heldout_percent > 0")
    total = sum(weights[n] for n in names)
    return Prepared(tok, names, [weights[n] / total for n in names], train, eval_source, media)


class MixtureStats(grain.IterDataset):
    """Counts (and strips) ``source_ids`` of packed batches; ``report(names, target, chunks, tokens)``
    is called every ``report_every`` batches."""

    def __init__(
        self, parent: grain.IterDataset, names: list[str], weights: list[float], report_every: int, report=None
    ):
        super().__init__(parent)
        self.names, self.weights, self.report_every, self.report = names, weights, report_every, report

    def __iter__(self):
        return _MixtureStatsIterator(self._parent.__iter__(), self)


class _MixtureStatsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, ds: MixtureStats):
        super().__init__(parent)
        self.ds = ds
        self.chunks = np.zeros(len(ds.names), np.int64)
        self.tokens = np.zeros(len(ds.names), np.int64)
        self.batches = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        src = batch.pop("source_ids")
        real = batch["segment_ids"] > 0
        starts = real & (batch["positions"] == 0)  # the first token of every packed chunk
        n = len(self.ds.names)
        self.tokens += np.bincount(src[real], minlength=n)[:n]
        self.chunks += np.bincount(src[starts], minlength=n)[:n]
        self.batches += 1
        if self.ds.report is not None and self.batches % self.ds.report_every == 0:
            self.ds.report(self.realised())
        return batch

    def realised(self) -> dict:
        """Per source: target weight and realised share of chunks and of tokens so far."""
        c, t = self.chunks.sum(), self.tokens.sum()
        return {
            name: {
                "target": w,
                "chunks": float(self.chunks[i] / c) if c else 0.0,
                "tokens": float(self.tokens[i] / t) if t else 0.0,
            }
            for i, (name, w) in enumerate(zip(self.ds.names, self.ds.weights))
        }

    def get_state(self) -> dict:
        return {
            "parent": self._parent.get_state(),
            "chunks": self.chunks.tolist(),
            "tokens": self.tokens.tolist(),
            "batches": self.batches,
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.chunks = np.asarray(state["chunks"], np.int64)
        self.tokens = np.asarray(state["tokens"], np.int64)
        self.batches = int(state["batches"])


def format_realised(realised: dict) -> str:
    return ", ".join(
        f"{n} {100 * r['tokens']:.1f}% of tokens / {100 * r['chunks']:.1f}% of chunks (target {100 * r['target']:.1f}%)"
        for n, r in realised.items()
    )


class MixtureReport:
    """Logs the realised proportions and writes them to ``path`` (JSON), e.g. run.dir/data_mixture.json."""

    def __init__(self, path: Path, logger):
        self.path, self.log = Path(path), logger

    def __call__(self, realised: dict) -> None:
        self.log.info("data mixture: %s", format_realised(realised))
        self.path.write_text(json.dumps(realised, indent=2))
