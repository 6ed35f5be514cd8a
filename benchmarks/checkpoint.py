"""Checkpoint speed, measured side by side in one run on the train state of ``configs/small_cpu.yaml``:

1. save throughput (GB/s, save until the write is finished) versus a raw write of the same bytes to the
   same directory (one file, flushed and fsync'ed, as tensorstore syncs its files);
2. restore throughput (GB/s, into arrays of the same placement);
3. the time ``Checkpointer.save`` blocks the caller (the device-to-host copy; the write is in the
   background) versus the time of one train step of that config.

Targets: save >= 50% of raw disk throughput; blocking <= 5% of a step.

    python benchmarks/checkpoint.py [--config configs/small_cpu.yaml] [--dir /tmp/x] [--repeats 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402
from train_step import one_batch  # noqa: E402

from open_r1_jax.checkpoint import Checkpointer, abstract  # noqa: E402
from open_r1_jax.config import load_config, to_dict  # noqa: E402
from open_r1_jax.model import (
    build_model,  # noqa: E402
    split_model,  # noqa: E402
)
from open_r1_jax.training.optim import make_optimizer  # noqa: E402
from open_r1_jax.training.stages import Pretrain  # noqa: E402
from open_r1_jax.training.step import init_state, make_train_step  # noqa: E402


def raw_write(state, path: Path) -> float:
    """Seconds to write every leaf's bytes to one file, fsync'ed (the disk's own speed here)."""
    host = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for a in host:
            f.write(memoryview(np.ascontiguousarray(a)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/small_cpu.yaml")
    ap.add_argument(
        "--dir",
        default=None,
        help="where to write (default: a temporary folder on the same disk as the working directory)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="train steps timed for the blocking ratio")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir or "."))
    try:
        graphdef, params, model_state = split_model(build_model(cfg.model, 0))
        tx = make_optimizer(cfg.train)
        state = init_state(params, model_state, tx, cfg)
        batch = {k: jnp.asarray(v) for k, v in one_batch(cfg).items()}
        step = (
            jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg), donate_argnums=0)
            .lower(state, batch)
            .compile()
        )
        state, m = step(state, batch)  # warm-up; the optimizer moments are now non-zero
        jax.block_until_ready(m)
        step_times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            step_times.append(time.perf_counter() - t0)
        step_s = float(np.median(step_times))
        nbytes = sum(x.nbytes for x in jax.tree.leaves(state))

        raw, save, block, restore = [], [], [], []
        ckpt = Checkpointer(work / "checkpoints", keep=args.repeats + 2)
        config = to_dict(cfg)
        ckpt.save(0, state, config=config)  # warm-up: orbax's thread pools and tensorstore start once
        ckpt.wait()
        for i in range(args.repeats):
            raw.append(raw_write(state, work / "raw.bin"))
            t0 = time.perf_counter()
            ckpt.save(i + 1, state, config=config)
            block.append(time.perf_counter() - t0)
            ckpt.wait()
            save.append(time.perf_counter() - t0)
            state, m = step(state, batch)  # the loop goes on: the buffers saved are donated
            jax.block_until_ready(m)
        target = abstract(state)
        for i in range(args.repeats):
            t0 = time.perf_counter()
            restored = ckpt.restore(i + 1, target)
            jax.block_until_ready(restored)
            restore.append(time.perf_counter() - t0)
            del restored
        ckpt.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = lambda xs: float(np.median(xs))  # noqa: E731
    gb = nbytes / 1e9
    figures = {
        "config": args.config,
        "state_gb": round(gb, 4),
        "save_gb_s": round(gb / med(save), 3),
        "raw_write_gb_s": round(gb / med(raw), 3),
        "save_over_raw": round(med(raw) / med(save), 3),
        "restore_gb_s": round(gb / med(restore), 3),
        "save_blocking_ms": round(med(block) * 1e3, 2),
        "step_ms": round(step_s * 1e3, 1),
        "blocking_over_step": round(med(block) / step_s, 4),
        "targets_met": {
            "save_over_raw>=0.5": med(raw) / med(save) >= 0.5,
            "blocking_over_step<=0.05": med(block) / step_s <= 0.05,
        },
    }
    print(
        f"state {gb:.3f} GB: save {figures['save_gb_s']} GB/s vs raw write {figures['raw_write_gb_s']} GB/s "
        f"({figures['save_over_raw']:.0%}); restore {figures['restore_gb_s']} GB/s; save blocks "
        f"{figures['save_blocking_ms']} ms = {figures['blocking_over_step']:.1%} of a {figures['step_ms']} ms step"
    )
    emit("checkpoint", figures)


if __name__ == "__main__":
    main()
