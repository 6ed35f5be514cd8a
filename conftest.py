"""Compile settings of the whole suite (tests/ and parity_tests/), set before anything imports jax.

Compilation is most of the suite's time on 2 CPU cores (tests/test_train.py: 122 s cold, 37 s with
every program already compiled), and the models are tiny, so:

- One persistent compilation cache per run, shared by both xdist workers and by every subprocess a
  test starts (they inherit the environment): many tests compile the same micro train step or model.
  A cached executable is the one XLA compiled, so it computes the same bits. The cache is a fresh
  temporary folder, removed at exit: CI and a developer's run see the same cold start.
- LLVM at -O0 (``--xla_backend_optimization_level=0``): HLO fusion is unchanged, only the machine
  code is less optimised, which tiny test shapes do not notice (tests/test_train.py: 122 s -> 83 s).

Benchmarks and real runs use neither. ``tests/micro.py::subprocess_env`` adds device counts to these
flags instead of replacing them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller; workers and subprocesses inherit it
    _cache = tempfile.mkdtemp(prefix="open_r1_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
if SUITE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()
