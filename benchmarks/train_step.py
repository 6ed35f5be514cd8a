"""Train-step throughput and memory, measured side by side in one run:

1. tokens/s of the JAX train step versus the ``torch_ref`` train step (eager, and ``torch.compile``
   when it works) on the same config and batch. torch_ref computes every expert (dense dispatch, the
   readable reference), so the JAX step is also timed with ``moe.dispatch=dense`` for a like-for-like
   ratio.
2. MFU of the JAX step against the fp32 matmul peak measured in the same run.
3. Compiled temporary memory of the train step with and without activation checkpointing on a deep
   config (``jit(...).lower(...).compile().memory_analysis()``), beside the planner's estimate of it
   (``python -m open_r1_jax.plan``, traced for this CPU's program).

    python benchmarks/train_step.py [--config configs/small_cpu.yaml] [--steps 5] [--quick] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import JaxStep, TorchRefStep, emit, jax_step, one_batch  # noqa: E402

from open_r1_jax.config import load_config, replace  # noqa: E402
from open_r1_jax.plan import plan  # noqa: E402
from open_r1_jax.training.metrics import flops_per_token, measure_peak_flops  # noqa: E402


def time_jax(cfg, batch, steps: int) -> float:
    return JaxStep(cfg, batch, warmup=1).run(steps)


def time_torch(cfg, batch, steps: int, compile_model: bool) -> float:
    return TorchRefStep(cfg, batch, compile_model, warmup=1).run(steps)


def temp_memory(cfg, batch) -> int:
    lowered, _, _ = jax_step(cfg, batch)
    return int(lowered.compile().memory_analysis().temp_size_in_bytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/small_cpu.yaml")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--deep-layers", type=int, default=16, help="layers of the remat memory config")
    ap.add_argument("--quick", action="store_true", help="tiny config, 1 step (a smoke test)")
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.quick:
        args.config, args.steps, args.deep_layers = "configs/tiny.yaml", 1, 4
        args.overrides = ["train.global_batch=4", "train.seq_len=64"] + args.overrides
    cfg = load_config(args.config, args.overrides)
    batch = one_batch(cfg)
    tokens = float(np.count_nonzero(batch["segment_ids"]))
    fpt = flops_per_token(cfg.model, cfg.train.seq_len)
    peak = measure_peak_flops(jnp.float32)
    dense = replace(cfg, **{"model.moe.dispatch": "dense"})

    rows = {
        "jax_step": time_jax(cfg, batch, args.steps),
        "jax_dense_dispatch": time_jax(dense, batch, args.steps),
        "torch_eager": time_torch(cfg, batch, args.steps, compile_model=False),
    }
    compile_error = None
    if not args.no_torch_compile:
        try:
            rows["torch_compile"] = time_torch(cfg, batch, args.steps, compile_model=True)
        except Exception as e:  # noqa: BLE001 - report, do not hide
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    print(
        f"config {args.config}: {tokens:.0f} tokens per step, {fpt / 1e6:.1f} MFLOP per token, "
        f"measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"{'step':<22} {'s/step':>8} {'tokens/s':>10} {'MFU':>6} {'JAX speedup':>12}")
    figures = {"config": args.config, "tokens_per_step": tokens, "flops_per_token": fpt, "peak_flops": peak}
    for name, sec in rows.items():
        tps = tokens / sec
        print(f"{name:<22} {sec:>8.3f} {tps:>10.0f} {tps * fpt / peak:>6.1%} {sec / rows['jax_step']:>11.2f}x")
        figures[name] = {"seconds_per_step": sec, "tokens_per_sec": tps, "mfu": tps * fpt / peak}
    if compile_error:
        print(f"torch.compile failed: {compile_error}")
        figures["torch_compile_error"] = compile_error
    figures["jax_vs_torch_eager"] = rows["torch_eager"] / rows["jax_step"]
    figures["jax_dense_vs_torch_eager"] = rows["torch_eager"] / rows["jax_dense_dispatch"]

    deep = replace(cfg, **{"model.n_layers": args.deep_layers})
    ckpt = lambda flag: replace(deep, **{"model.activation_checkpoint": flag})
    mem = {flag: temp_memory(ckpt(flag), batch) for flag in (False, True)}
    planned = {flag: plan(ckpt(flag), "cpu").temporaries(flag) for flag in mem}
    saving = 1 - mem[True] / mem[False]
    print(
        f"compiled temp memory, {args.deep_layers} layers: {mem[False] / 2**20:.0f} MiB without, "
        f"{mem[True] / 2**20:.0f} MiB with activation checkpointing ({saving:.0%} less); the planner's "
        f"estimate: {planned[False] / 2**20:.0f} MiB ({planned[False] / mem[False]:.2f}x) and "
        f"{planned[True] / 2**20:.0f} MiB ({planned[True] / mem[True]:.2f}x)"
    )
    figures["remat"] = {
        "layers": args.deep_layers,
        "temp_bytes_without": mem[False],
        "temp_bytes_with": mem[True],
        "planned_bytes_without": planned[False],
        "planned_bytes_with": planned[True],
        "saving": saving,
    }
    emit("train_step", figures)


if __name__ == "__main__":
    main()
