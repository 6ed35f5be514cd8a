"""``python -m open_r1_jax.plan --config FILE [key=value ...]``: will this run fit?

Prints total and active parameter counts, and per-device memory for parameters, gradients,
optimizer state and activations (with and without activation checkpointing) under the configured
mesh, for A100 40/80 GB, H100 80 GB and H200 141 GB, and whether it fits.

Model (parameter shapes and their logical axes, and the activations, come from the model itself):
- parameters fp32 and AdamW moments 2 x fp32, each divided by how ``mesh.rules`` shards that array
  (the same rules the trainer uses); gradients fp32, sharded the same way;
- FSDP gathers one block's parameters at a time in the compute dtype (the largest block counts);
- the step's temporaries (what the compiled step's ``memory_analysis().temp_size_in_bytes`` holds)
  from ``training/memory.py``: the residuals autodiff keeps for one device's micro-batch, traced
  abstractly through the stage's loss with the configured checkpoint policy (weight-derived ones,
  such as compute-dtype casts and a checkpointed scan's stacked weights, are split like the
  weights); with checkpointing also the residuals of the blocks being recomputed (one per run of
  same-kind blocks: the midpoint of sharing and not sharing their loops' temporaries; "fits" uses
  the bound), and the gradients in full; with micro-batches one more gradient-sized accumulator.
  Tested against the compiler on CPU within 25% (tests/test_plan.py);
- the trace is the GPU's program with XLA kernels (``moe.grouped_impl: auto`` -> ``ragged_dot``);
  with Triton kernels flash attention keeps O(T) statistics instead of the T x T probabilities, so
  the attention share is then an upper bound;
- 10% of each device is kept free for XLA workspace and fragmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass

from open_r1_jax.config import Config, ConfigError, ModelConfig, load_config

HARDWARE = {"A100 40GB": 40e9, "A100 80GB": 80e9, "H100 80GB": 80e9, "H200 141GB": 141e9}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def param_shapes(m: ModelConfig) -> list[tuple[str, tuple[int, ...], tuple]]:
    """(name, shape, logical axes) of every parameter, read from the model itself: an abstract build
    (``nnx.eval_shape``: shapes only, no memory, seconds even for the 13B plans; the one the activation
    trace uses), so the planner cannot drift from what the trainer builds."""
    from flax import nnx

    from open_r1_jax.training.memory import abstract_model

    abstract, _ = abstract_model(m)
    return [
        (".".join(map(str, path)), tuple(v.get_value().shape), v.get_metadata().get("axes"))
        for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    ]


def count_params(m: ModelConfig) -> int:
    return sum(math.prod(s) for _, s, _ in param_shapes(m))


def count_active(m: ModelConfig) -> int:
    """Parameters one token uses: everything except the routed experts it is not sent to."""
    idle = (m.moe.n_experts - m.moe.top_k) * 3 * m.d_model * m.moe.expert_ffn_dim
    return count_params(m) - (m.n_layers - m.drn_layers) * idle


def shard_factor(axes: tuple, shape: tuple[int, ...], mesh: dict[str, int], rules: dict) -> int:
    """How many ways an array is split (the same decision as parallel.mesh.logical_spec)."""
    factor, used = 1, set()
    for name, dim in zip(axes, shape):
        mesh_axes = [a for a in rules.get(name, ()) if mesh[a] > 1 and a not in used]
        size = math.prod(mesh[a] for a in mesh_axes) if mesh_axes else 1
        if mesh_axes and dim % size == 0:
            factor *= size
            used.update(mesh_axes)
    return factor


@dataclass
class Plan:
    total_params: int
    active_params: int
    params: float  # bytes per device
    grads: float
    optimizer: float
    gathered_block: float
    activations: float  # residuals of one micro-batch without checkpointing
    activations_remat: float  # with checkpointing: the residuals kept across blocks ...
    recomputed_block: float  # ... and those of the blocks the backward pass recomputes (estimate) ...
    recomputed_upper: float  # ... at most (no temporaries shared between the runs' loops)
    accumulator: float  # the micro-batch scan's gradient accumulator (0 with one micro-batch)
    offload: str = "none"  # train.offload
    on_disk: bool = False  # train.offload_dir: the moments on disk instead of host memory

    def host(self) -> float:
        """Bytes per device in pinned host memory (``train.offload``)."""
        if self.on_disk:
            return self.host_without_moments()
        return {"none": 0.0, "optimizer": self.optimizer, "optimizer_and_params": self.optimizer + self.params}[
            self.offload
        ]

    def host_without_moments(self) -> float:
        return self.params if self.offload == "optimizer_and_params" else 0.0

    def disk(self) -> float:
        """Bytes per device on local disk (``train.offload_dir``)."""
        return self.optimizer if self.on_disk else 0.0

    def peak(self, remat: bool, upper: bool = False) -> float:
        """What the device must hold at the step's peak: the total, less the moments when the
        update runs in host memory (``train.offload``)."""
        return self.total(remat, upper) - (self.optimizer if self.offload != "none" else 0.0)

    def temporaries(self, remat: bool, upper: bool = False) -> float:
        """The compiled step's temporary memory (``upper``: its bound). Without checkpointing the
        gradients fill the space the freed residuals leave; with it the residuals are too small to
        hide them."""
        if remat:
            block = self.recomputed_upper if upper else self.recomputed_block
            return self.activations_remat + block + self.grads + self.accumulator
        return max(self.activations, self.grads) + self.accumulator

    def total(self, remat: bool, upper: bool = False) -> float:
        return self.params + self.optimizer + self.gathered_block + self.temporaries(remat, upper)


def activation_bytes(cfg: Config, n_batch_devices: int, weight_share: float = 1.0) -> tuple[float, ...]:
    """-> (residuals without checkpointing, with checkpointing, the recomputed blocks' estimate and
    bound), per device.
    ``weight_share``: the fraction of the weights one device holds (weight-derived residuals)."""
    from open_r1_jax.training.memory import recomputed_block_residuals, step_residuals

    rows = _rows_per_device(cfg, n_batch_devices)
    per_device = lambda split: weight_share * split[0] + split[1]
    ckpt = lambda on: dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, activation_checkpoint=on))
    full, remat = step_residuals(ckpt(False), rows), step_residuals(ckpt(True), rows)
    largest, every_run = (per_device(x) for x in recomputed_block_residuals(cfg, rows))
    # XLA shares some of the runs' loop temporaries (training/memory.py): the midpoint of the bounds
    return per_device(full), per_device(remat), (largest + every_run) / 2, every_run


def for_hardware(cfg: Config, backend: str) -> Config:
    """``cfg`` with the MoE dispatch ``backend`` runs (``moe.grouped_impl: auto`` resolves per backend)."""
    if cfg.model.moe.grouped_impl != "auto":
        return cfg
    impl = "ragged_dot" if backend == "gpu" else "blocked"
    moe = dataclasses.replace(cfg.model.moe, grouped_impl=impl)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, moe=moe))


def plan(cfg: Config, backend: str = "gpu", activations: bool = True) -> Plan:
    """``backend``: the hardware whose program is traced for the activations ("gpu": the plan's
    devices; "cpu": this machine's, to check the planner against the compiler). ``activations=False``:
    weights and optimizer state only (no trace; a frozen teacher's share)."""
    cfg = for_hardware(cfg, backend)
    mesh = {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "expert": cfg.mesh.expert}
    rules = {}
    for rule in cfg.mesh.rules:
        name, _, axes = rule.partition("=")
        rules[name] = tuple(a for a in axes.split("+") if a)
    shapes = param_shapes(cfg.model)
    local = sum(math.prod(s) / shard_factor(ax, s, mesh, rules) for _, s, ax in shapes)
    b = DTYPE_BYTES[cfg.model.dtype]
    block = max(
        sum(math.prod(s) for n, s, _ in shapes if n.startswith(f"blocks.{i}.")) for i in range(cfg.model.n_layers)
    )
    total = sum(math.prod(s) for _, s, _ in shapes)
    full, remat, recomputed, recomputed_upper = (
        activation_bytes(cfg, math.prod(mesh.values()), local / total) if activations else (0.0,) * 4
    )
    n_micro = cfg.train.global_batch // (cfg.train.micro_batch or cfg.train.global_batch)
    return Plan(
        total_params=total,
        active_params=count_active(cfg.model),
        params=4 * local,
        grads=4 * local,
        optimizer=8 * local,
        gathered_block=b * block if cfg.mesh.fsdp > 1 else 0.0,
        activations=full,
        activations_remat=remat,
        recomputed_block=recomputed,
        recomputed_upper=recomputed_upper,
        accumulator=4 * local if n_micro > 1 else 0.0,
        offload=cfg.train.offload,
        on_disk=bool(cfg.train.offload_dir),
    )


def report(cfg: Config, name: str = "") -> str:
    p = plan(cfg)
    gb = lambda x: f"{x / 1e9:8.2f}"
    n_dev = cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.expert
    lines = [
        f"{name or 'config'}: {p.total_params / 1e9:.3f}B parameters, {p.active_params / 1e9:.3f}B active per "
        f"token; mesh data={cfg.mesh.data} fsdp={cfg.mesh.fsdp} expert={cfg.mesh.expert} ({n_dev} devices), "
        f"{cfg.model.dtype}, micro-batch {cfg.train.micro_batch or cfg.train.global_batch} x {cfg.train.seq_len}",
        "",
        "| per device (GB) | without checkpointing | with checkpointing |",
        "|---|---|---|",
    ]
    both = lambda label, a, b: lines.append(f"| {label} | {gb(a)} | {gb(b)} |")
    for label, v in [
        ("parameters (fp32)", p.params),
        ("optimizer state (2 x fp32)", p.optimizer),
        ("gathered block (FSDP)", p.gathered_block),
    ]:
        both(label, v, v)
    both("activations: residuals of one micro-batch", p.activations, p.activations_remat)
    both("recomputed blocks (estimate)", 0.0, p.recomputed_block)
    both("gradients (fp32)", p.grads, p.grads)
    both("gradient accumulator (micro-batches)", p.accumulator, p.accumulator)
    both("step temporaries (compiler's temp memory)", p.temporaries(False), p.temporaries(True))
    lines.append(f"| **total** | {gb(p.total(False))} | {gb(p.total(True))} |")
    lines.append(
        "(without checkpointing the gradients fill the space of the freed residuals, so the temporaries are "
        "the larger of the two;"
    )
    lines.append(
        f"with checkpointing the recomputed blocks are at most {gb(p.recomputed_upper).strip()} GB, and "
        '"fits" below uses that bound)'
    )
    offload = cfg.train.offload
    if offload != "none":
        lines += [
            "",
            f"train.offload={offload}: {gb(p.host()).strip()} GB per device sit in pinned host memory (disk: "
            f"{gb(p.disk()).strip()} GB, train.offload_dir). The "
            "update runs on the host, so the moments never come to the device: its peak is the total less the",
            f"optimizer state, {gb(p.peak(False)).strip()} GB without checkpointing and {gb(p.peak(True)).strip()} "
            "GB with (the parameters, offloaded or not, are on the device for the forward and backward passes).",
        ]
    lines += ["", "| device | fits without checkpointing | fits with checkpointing |", "|---|---|---|"]
    for hw, cap in HARDWARE.items():
        ok = lambda remat: "yes" if p.peak(remat, upper=True) <= 0.9 * cap else "no"
        lines.append(f"| {hw} | {ok(False)} | {ok(True)} |")
    return "\n".join(lines)


def teacher_model(cfg: Config, teacher_config: str | None) -> ModelConfig:
    """The teacher's architecture for a ``train.stage: distill`` plan: ``--teacher-config`` (a config
    file, e.g. the plan that trains it), else the ``config.yaml`` of the ``distill.teacher`` run."""
    from pathlib import Path

    import yaml

    from open_r1_jax.checkpoint import model_config

    if teacher_config:
        return load_config(teacher_config).model
    found = Path(cfg.distill.teacher) / "config.yaml"
    if not found.is_file():
        raise ConfigError(
            f"distill.teacher: {cfg.distill.teacher!r} has no config.yaml to plan from; give the teacher's "
            "config file with --teacher-config (e.g. configs/a100x8_base.yaml)"
        )
    return model_config(yaml.safe_load(found.read_text()))


def teacher_report(cfg: Config, teacher: ModelConfig) -> str:
    """The teacher's share of a distillation step: its frozen weights (fp32, as checkpoints store them,
    sharded by the same rules as the student), its forward pass's largest live tensors (no backward:
    one block's activations and the fp32 logits), and its FLOPs per trained token."""
    from open_r1_jax.training.metrics import active_matmul_params, flops_per_token

    t = dataclasses.replace(cfg, model=dataclasses.replace(teacher, dtype=cfg.model.dtype))
    tp, sp = plan(t, activations=False), plan(cfg)
    weights = tp.params
    n_dev = cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.expert
    from open_r1_jax.training.memory import block_residuals

    rows = _rows_per_device(cfg, n_dev)
    logits = 2 * 4 * teacher.vocab_size * rows * cfg.train.seq_len  # fp32 logits and their softmax
    blocks = block_residuals(for_hardware(t, "gpu"), rows).values()
    forward = max(data for _, data in blocks) + logits  # the largest block's tensors, the logits
    seq = cfg.train.seq_len
    fwd = flops_per_token(teacher, seq) / 3  # forward only: 2 N + the attention's forward
    train = flops_per_token(cfg.model, seq)
    gb = lambda x: f"{x / 1e9:.2f} GB"
    ratio = active_matmul_params(cfg.model) / active_matmul_params(teacher)
    return "\n".join(
        [
            f"teacher: {tp.total_params / 1e9:.3f}B parameters, {tp.active_params / 1e9:.3f}B active per token; "
            f"student: {sp.total_params / 1e9:.3f}B parameters, {sp.active_params / 1e9:.3f}B active "
            f"({100 * ratio:.0f}% of the teacher's active matmul parameters)",
            f"teacher per device: weights {gb(weights)} (fp32, frozen: no gradient, no optimizer state), "
            f"forward working set {gb(forward)} (one block + fp32 logits and softmax)",
            f"teacher forward {fwd / 1e9:.1f} GFLOP per trained token vs the student's training step "
            f"{train / 1e9:.1f} GFLOP: the teacher adds {100 * fwd / train:.0f}% to each step's FLOPs",
            f"total per device with the teacher: {gb(sp.total(False) + weights + forward)} without checkpointing, "
            f"{gb(sp.total(True) + weights + forward)} with",
        ]
    )


def _rows_per_device(cfg: Config, n_batch_devices: int) -> int:
    """Rows of one micro-batch on one device (the batch is split over ``n_batch_devices``)."""
    return max((cfg.train.micro_batch or cfg.train.global_batch) // n_batch_devices, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m open_r1_jax.plan", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--teacher-config", help="train.stage distill: the teacher's config file (else distill.teacher's run)"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        teacher = teacher_model(cfg, args.teacher_config) if cfg.train.stage == "distill" else None
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(report(cfg, args.config))
    if teacher is not None:
        print("\n" + teacher_report(cfg, teacher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
