"""The distillation teacher's outputs, computed once and read with the batches (``distill.cache_teacher``).

Without a cache the frozen teacher runs forward in every training step (and sits in device memory).
With it, ``TeacherCache.open_or_build`` runs the teacher once over the batches the run will see (the
training stream is deterministic: it is what exact resume relies on) and the held-out batches, and
keeps, per token, the teacher's top-k log-probabilities at temperature T and the log of the mass left
outside them. The step then costs what the student's own step costs, the teacher needs no device
memory while training, and one cache serves every student trained on the same stream (a sweep of
students, of alpha, of learning rates).

Layout of ``distill.cache_dir`` (default ``<run>/teacher_cache``), per split (``train``, ``eval``):

    {split}_ids.npy   [N,B,T,k] int16 / int32   the teacher's top-k token ids, most likely first
    {split}_logp.npy  [N,B,T,k] cache_dtype      their log-probabilities at temperature T
    {split}_rest.npy  [N,B,T]   float32          log(1 - their mass): the "any other token" outcome
    {split}_crc.npy   [N]       uint32           crc32 of each batch's inputs and segment ids

with N batches of B rows (``train.global_batch``) and T = ``train.seq_len``; ``meta.json`` says what
the cache was built from (teacher, its step, T, k, dtype, batch shape, seed, data). A cache whose meta
differs, or with fewer batches than ``train.steps``, is rebuilt; it is written to a temporary folder
and renamed when complete, so an interrupted build leaves nothing half-written. Every batch read is
checked against its crc: a stream that differs from the cached one (other data, packing or tokenizer)
stops with an error instead of distilling from another text's logits.

The loss on the cache (``stages/distill.py: cached_kl``) is the KL between the two distributions
coarsened to k + 1 outcomes (the teacher's top k and the rest): exactly the full KL when k >= V and a
lower bound of it otherwise (coarsening never increases a KL divergence).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from open_r1_jax import config as config_lib
from open_r1_jax.config import ConfigError

log = logging.getLogger("open_r1_jax")

_FILES = {"teacher_ids": "ids", "teacher_logp": "logp", "teacher_rest": "rest"}


def top_k_logprobs(logits, temperature: float, k: int):
    """[B,T,V] logits -> (ids [B,T,k] int32, log-probs at T [B,T,k] f32, log of the rest's mass [B,T] f32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    k = min(k, logp.shape[-1])
    vals, ids = jax.lax.top_k(logp, k)
    if k >= logp.shape[-1]:
        return ids, vals, jnp.full(logp.shape[:-1], -jnp.inf, jnp.float32)
    return ids, vals, rest_logmass(logp, ids)


def rest_logmass(logp, ids):
    """log of the probability mass outside ``ids`` [B,T,k] of log-probs [B,T,V], without cancellation."""
    inside = jnp.put_along_axis(jnp.zeros(logp.shape, bool), ids, True, axis=-1, inplace=False)
    return jax.nn.logsumexp(jnp.where(inside, -jnp.inf, logp), axis=-1)


def cache_directory(cfg, run_dir: Path) -> Path:
    """``distill.cache_dir``, or ``<run>/teacher_cache``."""
    return Path(cfg.distill.cache_dir) if cfg.distill.cache_dir else Path(run_dir) / "teacher_cache"


def batch_crc(batch: dict) -> int:
    """Fingerprint of a batch's text and packing (not of the cached arrays)."""
    return zlib.crc32(np.ascontiguousarray(batch["segment_ids"]).tobytes(), zlib.crc32(batch["inputs"].tobytes()))


class TeacherCache:
    """Read access to a built cache: ``entry(split, i, batch)`` -> the batch's teacher arrays."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self._arrays: dict = {}

    def _array(self, split: str, what: str) -> np.ndarray:
        if (split, what) not in self._arrays:  # memory-mapped on first use
            self._arrays[split, what] = np.load(self.directory / f"{split}_{what}.npy", mmap_mode="r")
        return self._arrays[split, what]

    def batches(self, split: str) -> int:
        return len(self._array(split, "crc"))

    def entry(self, split: str, i: int, batch: dict) -> dict[str, np.ndarray]:
        if i >= self.batches(split):
            raise RuntimeError(
                f"teacher cache {self.directory}: the {split} stream asked for batch {i + 1}, the cache has "
                f"{self.batches(split)} (rebuild it: delete the folder or raise train.steps before building)"
            )
        if batch_crc(batch) != int(self._array(split, "crc")[i]):
            raise RuntimeError(
                f"teacher cache {self.directory}: {split} batch {i} is not the batch the cache was built from "
                "(the data, tokenizer, packing or seed changed since); delete the folder to rebuild it"
            )
        out = {key: np.asarray(self._array(split, f)[i]) for key, f in _FILES.items()}
        out["teacher_ids"] = out["teacher_ids"].astype(np.int32)
        out["teacher_logp"] = out["teacher_logp"].astype(np.float32)
        return out

    def wrap(self, it: grain.DatasetIterator) -> grain.DatasetIterator:
        """The training iterator with the teacher's arrays added to each batch (checkpointable)."""
        return _CachedIterator(it, self)

    @classmethod
    def open_or_build(cls, stage, ctx) -> TeacherCache:
        """The cache of ``distill.cache_dir`` if it was built for this run's teacher, temperature, k and
        stream; else built now with the teacher in ``stage.frozen`` (``stage.teacher_forward``)."""
        cfg, d, t = stage.cfg, stage.cfg.distill, stage.cfg.train
        if jax.process_count() > 1:
            raise ConfigError(
                "distill.cache_teacher: the cache is built and read by one process; "
                "for multi-host runs set distill.cache_teacher=false (the teacher runs in the step)"
            )
        directory = cache_directory(cfg, ctx.run_dir)
        meta = {
            "teacher": str(Path(d.teacher).resolve()),
            "teacher_step": stage.teacher_step,
            "temperature": d.temperature,
            "top_k": d.cache_top_k,
            "dtype": d.cache_dtype,
            "global_batch": t.global_batch,
            "seq_len": t.seq_len,
            "seed": t.seed,
            "eval_batches": t.eval_batches,
            "data": config_lib.to_dict(cfg)["data"],
        }
        if (directory / "meta.json").is_file():
            have = cls(directory)
            same = {k: v for k, v in have.meta.items() if k in meta} == meta
            if same and have.batches("train") >= t.steps:
                log.info("distill: teacher cache %s (%d train batches, built in %.0f s)", directory,
                         have.batches("train"), have.meta["build_seconds"])  # fmt: skip
                return have
            log.info("distill: teacher cache %s was built for another run or fewer steps; rebuilding", directory)
        return cls._build(stage, ctx, directory, meta)

    @classmethod
    def _build(cls, stage, ctx, directory: Path, meta: dict) -> TeacherCache:
        t0, d, t = time.perf_counter(), stage.cfg.distill, stage.cfg.train
        tmp = directory.with_name(directory.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fn = jax.jit(lambda frozen, b: top_k_logprobs(stage.teacher_forward(frozen, b), d.temperature, d.cache_top_k))
        id_dtype = np.int16 if stage.cfg.model.vocab_size <= np.iinfo(np.int16).max else np.int32
        it = stage.train_iter
        start = it.get_state()
        held = list(stage.plain_eval_batches())  # a fixed, short list
        for split, n, batches in (("train", t.steps, (next(it) for _ in range(t.steps))), ("eval", len(held), held)):
            shape, k = (n, t.global_batch, t.seq_len), min(d.cache_top_k, stage.cfg.model.vocab_size)
            out = [
                np.lib.format.open_memmap(tmp / f"{split}_ids.npy", "w+", id_dtype, (*shape, k)),
                np.lib.format.open_memmap(tmp / f"{split}_logp.npy", "w+", np.dtype(d.cache_dtype), (*shape, k)),
                np.lib.format.open_memmap(tmp / f"{split}_rest.npy", "w+", np.float32, shape),
            ]
            crc = np.zeros(n, np.uint32)
            pending = None  # batch i runs on the devices while the host prepares batch i + 1
            quiet = not stage.cfg.run.progress
            for i, batch in enumerate(tqdm(batches, total=n, desc=f"teacher cache ({split})", disable=quiet)):
                crc[i] = batch_crc(batch)
                result = (i, fn(stage.frozen, ctx.put(batch)))
                if pending is not None:
                    _write(out, *pending)
                pending = result
            if pending is not None:
                _write(out, *pending)
            for a in out:
                a.flush()
            np.save(tmp / f"{split}_crc.npy", crc)
        it.set_state(start)  # training reads the stream from its start
        meta["build_seconds"] = time.perf_counter() - t0
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        size = sum(f.stat().st_size for f in directory.iterdir())
        log.info("distill: teacher cache built in %.0f s: %s, %.0f MB", meta["build_seconds"], directory, size / 1e6)
        return cls(directory)


def _write(out: list[np.ndarray], i: int, arrays) -> None:
    for a, x in zip(out, jax.device_get(arrays)):
        a[i] = x


class _CachedIterator(grain.DatasetIterator):
    """Adds the cached teacher arrays to each training batch; its state is the parent's and the count."""

    def __init__(self, parent: grain.DatasetIterator, cache: TeacherCache):
        super().__init__(parent)
        self.cache, self.i = cache, 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        batch.update(self.cache.entry("train", self.i, batch))
        self.i += 1
        return batch

    def get_state(self):
        return {"parent": self._parent.get_state(), "batches": self.i}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.i = state["batches"]
