"""Shared helpers of the benchmark scripts: timing of jitted functions and the closing JSON line."""

from __future__ import annotations

import json
import platform
import time

import jax


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn(*args)`` (already jitted), after ``warmup`` calls (compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def environment() -> dict:
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "device": f"{dev.platform}:{dev.device_kind}",
        "n_devices": jax.device_count(),
        "python": platform.python_version(),
    }


def emit(name: str, figures: dict) -> None:
    """The closing line of every benchmark: one JSON object with its figures."""
    print(json.dumps({"benchmark": name, **environment(), **figures}))
