"""``latency`` and ``resources``: how fast the model generates, and what a run and this evaluation cost.

latency: batch 1, a ``latency.prompt_tokens``-token prompt of held-out text, greedy; time to first
token (prefill + first sample, as the caller receives it) and time per output token (one decoding
step per call, host round trip included), p50 / p95 over ``latency.repeats`` repeats after one
warm-up that holds every compilation. The seed's target: first token in under 500 ms at 1024 tokens.

resources: generation throughput (new tokens per second, prefill included) at each batch of
``resources.batches``; the process's peak memory (device statistics where the backend has them, else
peak RSS); a run's training throughput, energy and CO2 from its ``summary.json``; this evaluation's
own energy and CO2 (wall time x device power x devices, as the trainer estimates its own).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from open_r1_jax.generate import Generator, Sampling


def held_out_tokens(model, n: int) -> list[int]:
    """The first ``n`` tokens of the embedded corpus's held-out text (repeated if it is shorter)."""
    from open_r1_jax.eval.mc_data import heldout_documents

    out: list[int] = []
    for _, text in heldout_documents():
        out += model.tokenizer.encode(text).tolist() + [model.tokenizer.eos_id]
        if len(out) >= n:
            return out[:n]
    return (out * (n // max(len(out), 1) + 1))[:n]


def _generator(model) -> Generator:
    return Generator(model.config, model.pre.params, model.pre.model_state)


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def latency(model, cfg) -> dict:
    gen, prompt = _generator(model), held_out_tokens(model, cfg.prompt_tokens)
    run = lambda: gen.generate([prompt], cfg.new_tokens, Sampling(), steps_per_call=1)
    run()  # warm-up: compiles the prefill and the one-step decode
    ttft, tpot = [], []
    for _ in range(cfg.repeats):
        out = run()
        ttft.append(out.prefill_s)
        tpot += [s for _, s in out.calls[1:]]
    ms = lambda v: {"value": v * 1e3, "n": cfg.repeats}
    return {
        "metrics": {
            "ttft_ms_p50": ms(pct(ttft, 50)),
            "ttft_ms_p95": ms(pct(ttft, 95)),
            "tpot_ms_p50": {"value": pct(tpot, 50) * 1e3, "n": len(tpot)},
            "tpot_ms_p95": {"value": pct(tpot, 95) * 1e3, "n": len(tpot)},
        },
        "config": {"prompt_tokens": len(prompt), "new_tokens": cfg.new_tokens, "repeats": cfg.repeats, "batch": 1},
        "samples": {"ttft_s": ttft, "tpot_s": tpot},
        "target": {"ttft_ms_p50": "< 500 (seed: inference latency at 1024 tokens)"},
    }


def run_summary(path: Path) -> dict:
    """The training figures of the run that ``path`` (run, checkpoint or export inside one) belongs to."""
    for d in (path, *path.parents[:3]):
        if (d / "summary.json").is_file():
            return json.loads((d / "summary.json").read_text()) | {"summary": str(d / "summary.json")}
    return {}


def resources(model, cfg, eval_seconds: float) -> dict:
    import jax

    from open_r1_jax.training.metrics import default_device_watts, hardware_units, peak_memory_bytes

    gen = _generator(model)
    base = held_out_tokens(model, cfg.prompt_tokens * max(cfg.batches))
    metrics = {}
    for b in cfg.batches:
        prompts = [base[i * cfg.prompt_tokens : (i + 1) * cfg.prompt_tokens] for i in range(b)]
        gen.generate(prompts, cfg.new_tokens, Sampling(), steps_per_call=16)  # warm-up (compilation)
        t0 = time.perf_counter()
        out = gen.generate(prompts, cfg.new_tokens, Sampling(), steps_per_call=16)
        metrics[f"gen_tokens_per_s_b{b}"] = {
            "value": sum(len(t) for t in out.tokens) / (time.perf_counter() - t0),
            "n": b,
        }
    metrics["peak_memory_gb"] = {"value": peak_memory_bytes() / 1e9}
    run = run_summary(model.path)
    for key in ("energy_kwh", "co2_kg"):
        if key in run:
            metrics[f"train_{key}"] = {"value": float(run[key])}
    if "tokens_seen" in run and run.get("train_seconds"):
        metrics["train_tokens_per_s"] = {"value": run["tokens_seen"] / run["train_seconds"]}
    watts = cfg.device_watts or default_device_watts()
    kwh = watts * hardware_units(jax.devices()) * eval_seconds / 3.6e6
    metrics["eval_energy_kwh"] = {"value": kwh}
    metrics["eval_co2_kg"] = {"value": kwh * cfg.grid_kg_per_kwh}
    return {
        "metrics": metrics,
        "config": {
            "prompt_tokens": cfg.prompt_tokens,
            "new_tokens": cfg.new_tokens,
            "device_watts": watts,
            "grid_kg_per_kwh": cfg.grid_kg_per_kwh,
            "run_summary": run.get("summary"),
        },  # fmt: skip
    }
