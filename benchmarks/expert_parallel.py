"""Expert parallelism on 8 devices (fake CPU devices here; real GPUs when present): step time for
mesh.expert = 1, 2, 4, 8 at a fixed model (the rest of the 8 devices on ``data``), and the bytes the
token exchange moves per step versus the analytic minimum.

Bytes per step, all devices together (forward and backward each do two exchanges):
- moved: every all_to_all sends each device's [ep, C, D] buffer except its own slice:
  n_dev * (ep-1) * C * D * bytes * 4 per MoE layer and micro-batch;
- minimum: only rows whose expert lives on another device cross, once each way, in forward and
  backward: rows * (ep-1)/ep * D * bytes * 4 (rows = tokens x top_k, uniform routing).
Dropless (capacity 0) uses C = tokens-per-device x top_k, so it moves ep times the minimum; a capacity
factor cf moves about cf times the minimum and drops what overflows (counted).

    python benchmarks/expert_parallel.py [--steps 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

if "jax" not in sys.modules and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

from open_r1_jax.config import load_config  # noqa: E402
from open_r1_jax.parallel.mesh import batch_sharding, make_mesh  # noqa: E402
from open_r1_jax.training.metrics import flops_per_token  # noqa: E402
from open_r1_jax.training.optim import make_optimizer  # noqa: E402
from open_r1_jax.training.stages import Pretrain  # noqa: E402
from open_r1_jax.training.state import create_train_state  # noqa: E402
from open_r1_jax.training.step import make_train_step  # noqa: E402

MODEL = [
    "model.d_model=128",
    "model.n_layers=4",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=32",
    "model.max_seq_len=256",
    "model.moe.n_experts=16",
    "model.moe.top_k=2",
    "model.moe.expert_ffn_dim=128",
    "train.seq_len=256",
    "train.global_batch=32",
    "train.micro_batch=16",
    "train.warmup_steps=1",
    "train.steps=10",
]


def batch(cfg):
    rng = np.random.default_rng(0)
    b, t = cfg.train.global_batch, cfg.train.seq_len
    tok = rng.integers(0, 256, (b, t + 1)).astype(np.int32)
    return {
        "inputs": tok[:, :-1],
        "targets": tok[:, 1:],
        "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        "segment_ids": np.ones((b, t), np.int32),
    }


def measure(ep: int, capacity: float, steps: int, extra: list[str]) -> dict:
    n = jax.device_count()
    cfg = load_config(
        None, MODEL + extra + [f"mesh.expert={ep}", f"mesh.data={n // ep}", f"model.moe.capacity_factor={capacity}"]
    )
    mesh = make_mesh(cfg.mesh)
    with jax.set_mesh(mesh):
        tx = make_optimizer(cfg.train)
        graphdef, state, sh = create_train_state(cfg, tx, mesh)
        bsh = batch_sharding(mesh)
        step = jax.jit(
            make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg),
            in_shardings=(sh, bsh),
            out_shardings=(sh, None),
            donate_argnums=0,
        )
        jb = {k: jax.device_put(v, bsh) for k, v in batch(cfg).items()}
        state, m = step(state, jb)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, jb)
        jax.block_until_ready(m)
        sec = (time.perf_counter() - t0) / steps
    t = cfg.train
    n_micro = t.global_batch // (t.micro_batch or t.global_batch)
    tokens_dev = (t.micro_batch or t.global_batch) * t.seq_len // n
    a, d, bytes_ = cfg.model.moe.top_k, cfg.model.d_model, 4
    cap = tokens_dev * a if capacity <= 0 else max(1, math.ceil(capacity * tokens_dev * a / ep))
    layers = cfg.model.n_layers - cfg.model.drn_layers
    moved = n * (ep - 1) * cap * d * bytes_ * 4 * layers * n_micro if ep > 1 else 0
    rows = t.global_batch * t.seq_len * a
    minimum = rows * (ep - 1) / ep * d * bytes_ * 4 * layers
    tokens = t.global_batch * t.seq_len
    return {
        "expert": ep,
        "capacity_factor": capacity,
        "seconds_per_step": sec,
        "tokens_per_sec": tokens / sec,
        "exchange_bytes": moved,
        "minimum_bytes": minimum,
        "dropped_rows_last_step": int(m["dropped"]),
        "flops_per_token": flops_per_token(cfg.model, t.seq_len),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    extra = ["model.d_model=64", "model.n_layers=2", "train.seq_len=64", "model.max_seq_len=64"] if args.quick else []
    n = jax.device_count()
    dev = jax.devices()[0]
    print(f"{n} {dev.platform} devices; model {' '.join(MODEL + extra)}")
    print(
        f"{'expert':>6} {'capacity':>8} {'s/step':>8} {'tokens/s':>9} {'exchange MB':>12} {'minimum MB':>11} "
        f"{'ratio':>6} {'dropped':>8}"
    )
    rows = []
    for ep in [e for e in (1, 2, 4, 8) if n % e == 0]:
        for cap in [0.0] if ep == 1 else [0.0, 1.25]:
            r = measure(ep, cap, args.steps, extra)
            rows.append(r)
            ratio = r["exchange_bytes"] / r["minimum_bytes"] if r["minimum_bytes"] else float("nan")
            print(
                f"{ep:>6} {cap:>8} {r['seconds_per_step']:>8.3f} {r['tokens_per_sec']:>9.0f} "
                f"{r['exchange_bytes'] / 1e6:>12.1f} {r['minimum_bytes'] / 1e6:>11.1f} {ratio:>6.2f} "
                f"{r['dropped_rows_last_step']:>8}",
                flush=True,
            )
    emit("expert_parallel", {"rows": rows})


if __name__ == "__main__":
    main()
