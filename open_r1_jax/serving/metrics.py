"""The serving engine's Prometheus metrics (``GET /metrics``), in a registry of its own per engine.

Counters end in ``_total`` in the exposition (``openr1_generated_tokens_total``); rates over any
window are Prometheus' ``rate()``; ``openr1_tokens_per_second`` is the last ``WINDOW_S`` seconds' rate
for a reader without Prometheus.
"""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW_S = 10.0
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EngineMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.queue = Gauge("openr1_queue_length", "requests waiting for a sequence slot", registry=r)
        self.running = Gauge("openr1_running_sequences", "sequences being decoded", registry=r)
        self.slots = Gauge("openr1_sequence_slots", "sequence slots of the engine", registry=r)
        self.tokens = Counter("openr1_generated_tokens", "tokens sampled", registry=r)
        self.prompt_tokens = Counter("openr1_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.rate = Gauge("openr1_tokens_per_second", f"tokens sampled per second, last {WINDOW_S:g} s", registry=r)
        self.rate.set_function(self._rate)
        self.ttft = Histogram(
            "openr1_time_to_first_token_seconds", "submit to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "openr1_request_latency_seconds", "submit to last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.decode_step = Histogram(
            "openr1_decode_step_seconds", "one decode step of all slots", buckets=LATENCY_BUCKETS, registry=r
        )
        self.sequences = Counter("openr1_sequences", "finished sequences by reason", ["finish"], registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) per step

    def sampled(self, n: int) -> None:
        """``n`` tokens were sampled (one call per engine step, not per token)."""
        self.tokens.inc(n)
        now = time.monotonic()
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in list(self._recent) if t >= now - WINDOW_S) / WINDOW_S

    def finished(self, reason: str, seconds: float) -> None:
        self.sequences.labels(finish=reason).inc()
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
