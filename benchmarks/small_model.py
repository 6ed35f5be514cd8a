"""A small model's CPU step against PyTorch, side by side in one run (issue: step speed on CPU).

For each config (default: the baby-GPT shape ``configs/baby_gpt.yaml`` and ``configs/tiny.yaml``):

1. the compiled JAX train step, fed the same batch again (no data loading);
2. the same architecture and batch in ``torch_ref`` eager, and with ``torch.compile``; for a dense
   config, also a plain PyTorch GPT of the same arithmetic written as nanoGPT is
   (``plain_torch.py``: fused q|k|v and gate|up linears, ``scaled_dot_product_attention``), the
   eager model the issue was filed against;
3. the Trainer's loop (data pipeline, host transfers, logging cadence) end to end, beside the
   step-only figure.

Each row runs in a process of its own (torch's spinning OpenMP threads slow XLA's in a shared
process); the rows' processes, the loop's included, alternate for ``--rounds`` rounds (these machines
are shared and noisy: a quiet or busy minute hits every row alike) and each row reports its median. GFLOP/s uses XLA's
cost analysis of the JAX step for every row (the same model arithmetic); MFU is against the fp32
matmul peak measured in this run.

    python benchmarks/small_model.py [--configs configs/baby_gpt.yaml configs/tiny.yaml] [--rounds 2]
        [--steps 5] [--loop-steps 60] [--no-torch-compile] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import JaxStep, TorchRefStep, emit, one_batch  # noqa: E402
from plain_torch import PlainTorchStep, is_dense  # noqa: E402

from open_r1_jax.config import load_config, replace  # noqa: E402
from open_r1_jax.parallel.mesh import make_mesh, split_cpu_host  # noqa: E402
from open_r1_jax.training.metrics import measure_peak_flops  # noqa: E402


def loop_tokens_per_sec(cfg, steps: int) -> float:
    """End-to-end tokens/s of the Trainer's loop (data, transfers, metrics) after its first window."""
    from open_r1_jax.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        every = max(steps // 4, 1)
        run = replace(
            cfg,
            **{
                "train.steps": steps,
                "train.warmup_steps": min(cfg.train.warmup_steps, steps - 1),
                "train.log_every": every,
                "train.eval_every": 0,
                "train.checkpoint_every": 0,
                "run.dir": tmp,
                "run.progress": False,
                "run.tensorboard": False,
                "run.peak_tflops": 1.0,
            },
        )
        train(run)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_sec"] for r in lines if "tokens_per_sec" in r][1:]  # the first holds compilation
    return statistics.median(windows)


ROWS = ("jax", "torch_ref eager", "torch_ref compile", "plain torch eager")


def worker(row: str, path: str, overrides: list[str], rounds: int, steps: int) -> dict:
    """One row in this process: its step times (``rounds`` timings of ``steps`` steps each); for
    ``loop``, the Trainer's end-to-end tokens/s. The JAX rows split the CPU host as the train CLI
    does where the config asks for it (``mesh.cpu_devices``)."""
    cfg = load_config(path, overrides)
    split = split_cpu_host(cfg.mesh, cfg.train.micro_batch or cfg.train.global_batch) if row in ("jax", "loop") else 1
    if row == "loop":
        return {"loop_tokens_per_sec": loop_tokens_per_sec(cfg, steps)}
    batch = one_batch(cfg)
    if row == "jax":
        r = JaxStep(cfg, batch, mesh=make_mesh(cfg.mesh) if split > 1 else None)
    elif row == "plain torch eager":
        r = PlainTorchStep(cfg, batch)
    else:
        r = TorchRefStep(cfg, batch, row == "torch_ref compile")
    out = {"times": [r.run(steps) for _ in range(rounds)], "tokens": int(np.count_nonzero(batch["segment_ids"]))}
    if row == "jax":
        out["flops"], out["devices"] = r.flops, split
    return out


def in_subprocess(row: str, path: str, args) -> dict | None:
    """Each row runs in a process of its own: torch's OpenMP threads keep spinning after an operation
    and, in one process with XLA's thread pool, slowed the JAX step by a third (measured)."""
    steps = args.loop_steps if row == "loop" else args.steps
    cmd = [sys.executable, __file__, "--worker", row, path, str(args.repeats), str(steps), *args.overrides]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {row} failed: {out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else out.returncode}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(path: str, args, peak: float) -> dict:
    """The rows alternate process by process for ``args.rounds`` rounds; each row's figure is the
    median of all its timings."""
    rows = [r for r in args.rows if not (args.no_torch_compile and r == "torch_ref compile")]
    if not is_dense(load_config(path, args.overrides).model):  # the plain GPT has no MoE
        rows = [r for r in rows if r != "plain torch eager"]
    times: dict[str, list[float]] = {r: [] for r in rows}
    loops: list[float] = []
    tokens = flops = 0
    devices = 1
    for _ in range(args.rounds):
        for row in [*rows, "loop"]:  # the loop alternates too: its ratio to the step-only figure is of one period
            res = in_subprocess(row, path, args)
            if res is None:
                continue
            if row == "loop":
                loops.append(res["loop_tokens_per_sec"])
                continue
            times[row] += res["times"]
            tokens, flops = res["tokens"], res.get("flops", flops)
            devices = res.get("devices", devices)
    sec = {name: statistics.median(t) for name, t in times.items() if t}
    print(f"\n{path}: {tokens} tokens per step, {flops / 1e9:.2f} GFLOP per step (XLA cost analysis)")
    print(f"  JAX on {devices} CPU device(s) (mesh.cpu_devices)")
    print(f"  {'step':<20} {'ms/step':>8} {'tokens/s':>10} {'GFLOP/s':>8} {'MFU':>6} {'JAX speedup':>12}")
    table = {}
    for name, s in sec.items():
        table[name] = {"ms_per_step": s * 1e3, "tokens_per_sec": tokens / s, "gflops_per_sec": flops / s / 1e9}
        print(
            f"  {name:<20} {s * 1e3:>8.1f} {tokens / s:>10,.0f} {flops / s / 1e9:>8.0f} {flops / s / peak:>6.1%} "
            f"{s / sec['jax']:>11.2f}x"
        )
    loop = statistics.median(loops) if loops else float("nan")
    step_only = tokens / sec["jax"]
    print(
        f"  loop end to end: {loop:,.0f} tokens/s = {loop / step_only:.0%} of the step-only {step_only:,.0f} "
        f"(medians of {len(loops)} loop runs and {len(times['jax'])} step timings, alternating)"
    )
    return {
        "tokens_per_step": tokens,
        "jax_cpu_devices": devices,
        "gflop_per_step": flops / 1e9,
        "rows": table,
        "jax_vs_torch_eager": sec["torch_ref eager"] / sec["jax"] if "torch_ref eager" in sec else None,
        "jax_vs_torch_compile": sec["torch_ref compile"] / sec["jax"] if "torch_ref compile" in sec else None,
        "jax_vs_plain_torch_eager": sec["plain torch eager"] / sec["jax"] if "plain torch eager" in sec else None,
        "mfu": flops / sec["jax"] / peak,
        "loop_tokens_per_sec": loop,
        "loop_over_step_only": loop / step_only,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/baby_gpt.yaml", "configs/tiny.yaml"])
    ap.add_argument("--rounds", type=int, default=2, help="processes per row, alternating with the other rows")
    ap.add_argument("--repeats", type=int, default=5, help="timings per process")
    ap.add_argument("--steps", type=int, default=5, help="steps per timing")
    ap.add_argument("--loop-steps", type=int, default=60)
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="which steps to time (jax first)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 timings of 1 step, a 8-step loop (a smoke test)")
    ap.add_argument("--worker", nargs=4, metavar=("ROW", "CONFIG", "REPEATS", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.worker:
        row, path, repeats, steps = args.worker
        print(json.dumps(worker(row, path, args.overrides, int(repeats), int(steps))))
        return
    if args.quick:
        args.rounds, args.repeats, args.steps, args.loop_steps = 1, 2, 1, 8
    peak = measure_peak_flops(jnp.float32)
    print(f"measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s on {os.cpu_count()} cores")
    figures = {"peak_flops": peak, **{path: bench(path, args, peak) for path in args.configs}}
    emit("small_model", figures)


if __name__ == "__main__":
    main()
