"""FLOP accounting, MFU, energy estimate, peak memory and the metrics writers (JSONL + TensorBoard).

FLOPs per trained token (documented convention, as in PaLM / nanoGPT):
    6 * N_active + 6 * L * H * K * T
N_active counts the matmul parameters a token goes through: attention projections, the DRN's router
and *all* its experts (dense routing), each MoE layer's router, its ``top_k`` routed experts and its
shared experts, and the LM head (the embedding lookup is free). The second term is causal attention
(QK^T and PV, 4*T*H*K forward per token per layer, halved by causality, times 3 for the backward).
Model FLOPs only: rematerialisation does not raise the count.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import ModelConfig


def active_matmul_params(cfg: ModelConfig) -> int:
    d, moe, drn = cfg.d_model, cfg.moe, cfg.drn
    attn = d * cfg.n_heads * cfg.head_dim * 2 + d * cfg.n_kv_heads * cfg.head_dim * 2
    drn_ffn = d * drn.n_experts + drn.n_experts * 3 * d * drn.expert_ffn_dim
    moe_ffn = d * moe.n_experts + (moe.top_k + moe.n_shared_experts) * 3 * d * moe.expert_ffn_dim
    n_moe = cfg.n_layers - cfg.drn_layers
    return cfg.n_layers * attn + cfg.drn_layers * drn_ffn + n_moe * moe_ffn + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 6.0 * active_matmul_params(cfg) + 6.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def measure_peak_flops(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an n^3 jitted matmul on the default device."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def hardware_units(devices) -> int:
    """What ``run.peak_tflops`` and ``run.device_watts`` count among ``devices``: each accelerator,
    but each CPU host once however many XLA devices it is split into (one device's matmul already
    uses every core)."""
    devices = list(devices)
    if devices[0].platform == "cpu":
        return len({d.process_index for d in devices})
    return len(devices)


def default_device_watts() -> float:
    dev = jax.local_devices()[0]
    return 400.0 if dev.platform == "gpu" else 15.0 * (os.cpu_count() or 1)


def peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def expert_load_stats(counts: np.ndarray) -> dict[str, float]:
    """counts [L,E] -> max/mean load ratio (1 = perfectly balanced) and coefficient of variation."""
    if counts.size == 0:
        return {}
    mean = counts.mean(axis=-1, keepdims=True).clip(min=1e-9)
    return {
        "expert_load_max_over_mean": float((counts.max(axis=-1) / mean[:, 0]).mean()),
        "expert_load_cv": float((counts.std(axis=-1) / mean[:, 0]).mean()),
    }


class MetricsWriter:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.is_file() and jax.process_index() == 0:
            # a crashed run may have logged steps after its last checkpoint: they are redone now
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if jax.process_index() != 0:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
