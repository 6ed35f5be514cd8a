"""Continuous batching: a fixed set of sequence slots sharing one KV cache and one compiled decode step.

Legend: B sequence slots, S cache slots per sequence (the context: prompt + completion), P a prompt
padded to its bucket, V vocabulary.

A request waits in a bounded queue until a slot is free. Its prompt is then prefilled into that
slot's row of the cache (right-padded to a power-of-two bucket: one compilation per bucket) and its
first token sampled. Each iteration of the loop admits new prompts (all that fit when nothing is
decoding; ``prefills_per_step`` while sequences are running, so a burst of arrivals delays the
running ones by one prefill, not by the whole queue), prefilled together in one call (rows padded
to a power of two), then runs one decode step for all B slots: every slot feeds its last token at
its own cache slot (``model/kv_cache.py``) and samples with its own temperature, top-p and key.
Empty slots ride along (their tokens are dropped), so one compilation serves every mix of requests.
A sequence leaves at a stop token, at its request's stop condition (stop strings), at
``max_tokens``, or when its client goes away (``Request.cancel``), and its slot takes a new prompt
at the next iteration.

While no request waits and every running sequence has at least ``decode_steps`` tokens left, one
compiled call runs that many steps (a scan that feeds each sampled token back): at one token per
call, the dispatch and the call's fixed cost are a large part of a small model's step. Tokens
sampled after a sequence's stop are dropped, as an empty slot's are; a client's cancel waits for
the call to end.

Sampling is reproducible per request: token i of a request uses fold_in(key(seed), i), whatever
else shares the batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from open_r1_jax.config import ModelConfig
from open_r1_jax.generate import nucleus
from open_r1_jax.serving.metrics import EngineMetrics

log = logging.getLogger(__name__)
MIN_BUCKET = 16  # shortest padded prompt; buckets double up to the context


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests: try again later (HTTP 429)."""


@dataclass
class Request:
    prompt: list[int]  # token ids, at least one
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()  # tokens that end the sequence (left out of the output)
    should_stop: Callable[[list[int]], bool] | None = None  # after each token, on all tokens so far
    on_tokens: Callable[[list[int], str | None], None] | None = None  # engine thread: new tokens, finish
    tokens: list[int] = field(default_factory=list)  # generated so far
    finish: str | None = None  # "stop", "length", "cancelled" or "error" once done
    error: str = ""  # what failed, with finish "error"
    submitted: float = 0.0
    first_token_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client went away: the engine frees the slot (or drops the queued request) next step."""
        self.cancelled = True


def bucket(n: int, context: int) -> int:
    """Padded prompt length: the next power of two >= n (at least MIN_BUCKET), at most the context."""
    return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), context)


def sample_rows(logits, key_data, counts, temperature, top_p) -> jax.Array:
    """logits [B,V] fp32, key_data [B,2] uint32, counts/temperature/top_p [B] -> tokens [B] int32.
    Each row samples with its own settings (temperature 0 = argmax) and key fold_in(key, count)."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(logits):
        keys = jax.vmap(lambda k, c: jax.random.fold_in(jax.random.wrap_key_data(k), c))(key_data, counts)
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        scaled = jax.lax.cond(jnp.any(top_p < 1), lambda x: nucleus(x, top_p[:, None]), lambda x: x, scaled)
        drawn = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    # the sort of the nucleus filter and the draws only run when some row needs them
    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, logits)


class Engine:
    """B slots of at most ``context`` tokens each; ``submit`` from any thread, ``start`` the loop (or
    call ``step`` yourself)."""

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        model_state: dict,
        slots: int = 8,
        context: int = 0,
        max_queue: int = 64,
        prefills_per_step: int = 1,
        decode_steps: int = 8,
        metrics: EngineMetrics | None = None,
    ):
        from open_r1_jax.model import build_model, merge_model

        if min(slots, max_queue, prefills_per_step, decode_steps) < 1:
            raise ValueError(
                f"slots ({slots}), max_queue ({max_queue}), prefills_per_step ({prefills_per_step}) and "
                f"decode_steps ({decode_steps}) must be >= 1"
            )
        self.config, self.params, self.model_state = config, params, model_state
        self.n_slots, self.context = slots, context or config.max_seq_len
        self.max_queue, self.prefills_per_step, self.decode_steps = max_queue, prefills_per_step, decode_steps
        self.metrics = metrics or EngineMetrics()
        graphdef = nnx.split(nnx.eval_shape(lambda: build_model(config, 0)), nnx.Param, ...)[0]
        self._model = lambda p, s: merge_model(graphdef, p, s)
        self.cache = self._new_cache()
        self._decode = jax.jit(self._decode_fn, donate_argnums=(2,), static_argnames="steps")
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=(2,))
        self.slots: list[Request | None] = [None] * slots
        zeros = lambda dtype=np.int32: np.zeros(slots, dtype)
        self.last, self.position, self.count = zeros(), zeros(), zeros()  # fed token, its position, tokens made
        self.temperature, self.top_p = zeros(np.float32), np.ones(slots, np.float32)
        self.key_data = np.zeros((slots, 2), np.uint32)
        self.queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self.metrics.slots.set(slots)

    # ------------------------------------------------------------------ jitted parts

    def _prefill_fn(self, params, model_state, cache, slots, tokens, lengths, key_data, temperature, top_p):
        """tokens [R,P] (right-padded, ``lengths`` [R] real) into rows ``slots`` [R] -> (first tokens
        [R], cache). R prompts in one call: the prefill's fixed cost is paid once, not R times.

        The prompts run against a cache of their own P slots (attention over P keys, not the context),
        which then becomes the first P slots of each row; the rows' other slots are marked empty. A
        padding row repeats row 0 (same slot, same tokens), so its write changes nothing."""
        model = self._model(params, model_state)
        r, p = tokens.shape
        real = jnp.arange(p)[None] < lengths[:, None]
        positions = jnp.broadcast_to(jnp.arange(p), (r, p))
        logits, rows = model.decode(tokens, positions, real, model.init_cache(r, p), jnp.int32(0))
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [R,V]
        first = sample_rows(last, key_data, jnp.zeros(r, jnp.int32), temperature, top_p)
        cache = {**cache, "valid": cache["valid"].at[slots].set(False)}  # what the last sequences left
        for j in range(r):  # R is static (a power of two): one write per row
            put = lambda c, x, j=j: jax.lax.dynamic_update_slice(
                c, x[j : j + 1].astype(c.dtype), (slots[j],) + (0,) * (c.ndim - 1)
            )
            cache = jax.tree.map(put, cache, rows)
        return first, cache

    def _decode_fn(self, params, model_state, cache, tokens, positions, key_data, counts, temperature, top_p, steps):
        """``steps`` tokens per slot: tokens/positions/counts [B] (a slot's position is also its cache
        slot) -> (tokens [steps,B], cache). Step t feeds step t-1's sample at position + t."""
        model = self._model(params, model_state)
        ones = jnp.ones((tokens.shape[0], 1), bool)

        def one(carry, _):
            cache, tokens, positions, counts = carry
            logits, cache = model.decode(tokens[:, None], positions[:, None], ones, cache, positions)
            tokens = sample_rows(logits[:, 0], key_data, counts, temperature, top_p)
            return (cache, tokens, positions + 1, counts + 1), tokens

        (cache, *_), sampled = jax.lax.scan(one, (cache, tokens, positions, counts), length=steps)
        return sampled, cache

    # ------------------------------------------------------------------ requests

    def check(self, request: Request) -> None:
        """ValueError naming the limit when a request cannot run here."""
        n = len(request.prompt)
        if n == 0:
            raise ValueError("prompt: empty; give at least one token")
        if n + request.max_tokens > self.context:
            raise ValueError(
                f"prompt ({n} tokens) + max_tokens ({request.max_tokens}) = {n + request.max_tokens} exceeds "
                f"the context of {self.context} tokens: shorten the prompt to at most "
                f"{self.context - request.max_tokens} tokens or lower max_tokens"
            )
        if min(request.prompt) < 0 or max(request.prompt) >= self.config.vocab_size:
            raise ValueError(f"prompt: token ids must be in [0, {self.config.vocab_size})")

    def submit(self, *requests: Request) -> None:
        """Queue requests (all or none): ValueError for one that cannot run, QueueFull when full."""
        for r in requests:
            self.check(r)
        with self._cv:
            if len(self.queue) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self.queue)} requests are waiting (serve max_queue={self.max_queue})")
            now = time.perf_counter()
            for r in requests:
                r.submitted = now
                self.queue.append(r)
            self.metrics.queue.set(len(self.queue))
            self._cv.notify()

    @property
    def running(self) -> int:
        return sum(r is not None for r in self.slots)

    # ------------------------------------------------------------------ the loop

    def step(self) -> bool:
        """Free cancelled slots, admit queued prompts, decode one token for every running slot.
        -> whether there was anything to do."""
        for i, r in enumerate(self.slots):
            if r is not None and r.cancelled:
                self._finish(i, "cancelled")
        if any(r.cancelled for r in self.queue):  # a client that left while queued frees its place now
            with self._cv:
                gone = [r for r in self.queue if r.cancelled]
                self.queue = collections.deque(r for r in self.queue if not r.cancelled)
                self.metrics.queue.set(len(self.queue))
            for r in gone:
                self._close(r, "cancelled")
        admitted = self._admit()
        if self.running:
            self._decode_step()
        self.metrics.running.set(self.running)
        return admitted or self.running > 0

    def _admit(self) -> bool:
        budget = self.n_slots if self.running == 0 else self.prefills_per_step
        group: list[tuple[int, Request]] = []
        free = [i for i, r in enumerate(self.slots) if r is None]
        with self._cv:  # step() dropped the cancelled ones
            while len(group) < min(budget, len(free)) and self.queue:
                group.append((free[len(group)], self.queue.popleft()))
            self.metrics.queue.set(len(self.queue))
        if group:
            self._start(group)
        return bool(group)

    def _start(self, group: list[tuple[int, Request]]) -> None:
        """Prefill the prompts of ``group`` ((slot, request) pairs) in one call, padded to a power of
        two of rows (one compilation per rows x prompt bucket) and to the longest prompt's bucket."""
        p = bucket(max(len(r.prompt) for _, r in group), self.context)
        padded = group + [group[0]] * ((1 << (len(group) - 1).bit_length()) - len(group))
        tokens = np.zeros((len(padded), p), np.int32)
        for j, (_, r) in enumerate(padded):
            tokens[j, : len(r.prompt)] = r.prompt
        for i, r in group:
            self.key_data[i] = np.asarray(jax.random.key_data(jax.random.key(r.seed)))
            self.temperature[i], self.top_p[i] = r.temperature, r.top_p
            self.slots[i] = r  # before the prefill: if it fails, _fail_running ends these requests too
        slots = np.array([i for i, _ in padded], np.int32)
        first, self.cache = self._prefill(
            self.params,
            self.model_state,
            self.cache,
            slots,
            tokens,
            np.array([len(r.prompt) for _, r in padded], np.int32),
            self.key_data[slots],
            self.temperature[slots],
            self.top_p[slots],
        )
        first = np.asarray(first)
        self.metrics.sampled(len(group))
        for j, (i, r) in enumerate(group):
            self.metrics.prompt_tokens.inc(len(r.prompt))
            self.position[i], self.count[i] = len(r.prompt), 0
            self._accept(i, int(first[j]))

    def _steps(self) -> int:
        """Decode steps for the next call: ``decode_steps`` when nobody waits for a slot and no
        running sequence can reach max_tokens (so no write passes its context), else 1."""
        left = min(r.max_tokens - len(r.tokens) for r in self.slots if r is not None)
        return self.decode_steps if not self.queue and left >= self.decode_steps else 1

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        steps = self._steps()
        tokens, self.cache = self._decode(
            self.params,
            self.model_state,
            self.cache,
            self.last,
            self.position,
            self.key_data,
            self.count,
            self.temperature,
            self.top_p,
            steps=steps,
        )
        tokens = np.asarray(tokens)
        per_step = (time.perf_counter() - t0) / steps  # one observation per decode step of the call
        for _ in range(steps):
            self.metrics.decode_step.observe(per_step)
        running, kept = [(i, r) for i, r in enumerate(self.slots) if r is not None], 0
        for t in range(steps):
            for i, r in running:
                if self.slots[i] is r:  # not finished at an earlier step of this call
                    self.position[i] += 1
                    self._accept(i, int(tokens[t, i]))
                    kept += 1
        self.metrics.sampled(kept)

    def _accept(self, i: int, token: int) -> None:
        """Slot i sampled ``token``: record it, stream it, and end the sequence if it is done."""
        r = self.slots[i]
        self.count[i] += 1
        if r.first_token_at is None:
            r.first_token_at = time.perf_counter()
            self.metrics.ttft.observe(r.first_token_at - r.submitted)
        if token in r.stop_ids:
            return self._finish(i, "stop")
        r.tokens.append(token)
        self.last[i] = token
        if r.should_stop is not None and r.should_stop(r.tokens):
            return self._finish(i, "stop", [token])
        if len(r.tokens) >= r.max_tokens:
            return self._finish(i, "length", [token])
        if r.on_tokens is not None:
            r.on_tokens([token], None)

    def _finish(self, i: int, reason: str, last: list[int] | None = None) -> None:
        r, self.slots[i] = self.slots[i], None
        self.last[i] = self.position[i] = self.count[i] = 0  # an empty slot decodes at slot 0 of its row
        self.temperature[i], self.top_p[i] = 0.0, 1.0
        self._close(r, reason, last or [])

    def _close(self, r: Request, reason: str, last: list[int] | None = None) -> None:
        r.finish = reason
        self.metrics.finished(reason, time.perf_counter() - r.submitted)
        if r.on_tokens is not None:
            r.on_tokens(last or [], reason)
        r.done.set()

    def _fail_running(self, message: str) -> None:
        for i, r in enumerate(self.slots):
            if r is not None:
                r.error = message
                self._finish(i, "error")
        self.cache = self._new_cache()  # the failed call may have consumed the donated cache

    def _new_cache(self) -> dict:
        model = self._model(self.params, self.model_state)
        return jax.jit(lambda: model.init_cache(self.n_slots, self.context))()

    def warmup(self, prompt_lengths: tuple[int, ...] = (1,)) -> None:
        """Compile the decode step (one step and ``decode_steps``) and the prefill buckets of these
        prompt lengths, for every power-of-two number of prompts that can arrive together (the first
        requests would otherwise pay for them)."""
        for n in prompt_lengths:
            rows = 1
            while rows <= min(self.n_slots, self.max_queue):  # each power-of-two group of prompts
                batch = [Request([0] * n, max_tokens=2) for _ in range(rows)]
                self.submit(*batch)
                while not all(r.done.is_set() for r in batch):
                    self.step()
                rows *= 2
        if self.decode_steps > 1 and prompt_lengths[0] + self.decode_steps + 1 <= self.context:
            r = Request([0] * prompt_lengths[0], max_tokens=self.decode_steps + 1)  # the multi-step call
            self.submit(r)
            while not r.done.is_set():
                self.step()

    def start(self) -> None:
        """Run ``step`` in a background thread until ``stop``."""
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="open-r1-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while self._running:
            try:
                busy = self.step()
            except Exception as e:  # a failed step fails the sequences it ran, never the server
                log.exception("engine step failed; its sequences end with finish 'error'")
                try:
                    self._fail_running(f"{type(e).__name__}: {e}")
                except Exception:  # e.g. no memory for a new cache: keep the loop alive, try again
                    log.exception("engine recovery failed; retrying")
                    time.sleep(1.0)
                continue
            if not busy:
                with self._cv:
                    self._cv.wait_for(lambda: self.queue or not self._running, timeout=0.5)

    def stop(self) -> None:
        self._running = False
        with self._cv:
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
