"""Checks of a config tree: impossible combinations (``validate``, one function per section) and keys
that the chosen path ignores (``ignored_keys``, warned about by the Trainer).

Every check raises one ``ConfigError`` that names the key and what would be accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from open_r1_jax.config.loader import ConfigError
from open_r1_jax.config.model import (
    MODEL_RUNTIME_KEYS,
    AttentionConfig,
    AudioConfig,
    DRNConfig,
    ModelConfig,
    MoEConfig,
    VisionConfig,
)
from open_r1_jax.config.run import (
    CleanConfig,
    Config,
    DataConfig,
    DistillConfig,
    DPOConfig,
    GRPOConfig,
    LoRAConfig,
    MeshConfig,
    SFTConfig,
    TrainConfig,
)


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: got {value}; accepted: {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: Config) -> None:
    """Impossible combinations raise one ConfigError naming the key. One function per section, so
    that a section can be checked alone (``model_from_dict``); the cross-section checks come last."""
    validate_model(cfg.model)
    validate_train(cfg.train)
    validate_data(cfg.data)
    validate_mesh(cfg.mesh)
    _validate_dpo(cfg)
    _validate_sft(cfg)
    _validate_distill(cfg)
    _validate_grpo(cfg)
    _validate_lora(cfg)
    m, t, d = cfg.model, cfg.train, cfg.data
    _validate_lsh_length(m.attention, t)
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len ({t.seq_len}) must be <= model.max_seq_len ({m.max_seq_len})")
    if m.moe.n_experts % cfg.mesh.expert:
        raise ConfigError(
            f"model.moe.n_experts ({m.moe.n_experts}) must be divisible by mesh.expert ({cfg.mesh.expert})"
        )
    if d.tokenizer == "bpe" and d.bpe_vocab_size > m.vocab_size:
        raise ConfigError(f"data.bpe_vocab_size ({d.bpe_vocab_size}) must be <= model.vocab_size ({m.vocab_size})")


def validate_model(m: ModelConfig) -> None:
    moe, drn = m.moe, m.drn
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "max_seq_len"):
        _positive(f"model.{key}", getattr(m, key))
    if not 0 <= m.drn_layers <= m.n_layers:
        raise ConfigError(f"model.drn_layers: got {m.drn_layers}; accepted: 0..model.n_layers ({m.n_layers})")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_heads ({m.n_heads}) must be divisible by model.n_kv_heads ({m.n_kv_heads})")
    if m.head_dim % 2:
        raise ConfigError(f"model.head_dim: got {m.head_dim}; accepted: an even number (rotary pairs)")
    for key in ("n_experts", "top_k", "expert_ffn_dim"):
        _positive(f"model.moe.{key}", getattr(moe, key))
    if moe.top_k > moe.n_experts:
        raise ConfigError(f"model.moe.top_k ({moe.top_k}) must be <= model.moe.n_experts ({moe.n_experts})")
    for key in (
        "n_shared_experts",
        "block_size",
        "balance_coef",
        "seq_balance_coef",
        "z_loss_coef",
        "bias_update_rate",
        "capacity_factor",
    ):
        _positive(f"model.moe.{key}", getattr(moe, key), allow_zero=True)
    _positive("model.drn.n_experts", drn.n_experts)
    _positive("model.drn.expert_ffn_dim", drn.expert_ffn_dim)
    for i in m.attention.lsh_layers:
        if not 0 <= i < m.n_layers:
            raise ConfigError(f"model.attention.lsh_layers: layer {i} does not exist; accepted: 0..{m.n_layers - 1}")
    _validate_attention(m.attention)
    _validate_vision(m.vision)
    _validate_audio(m.audio)


def _validate_encoder(prefix: str, e: VisionConfig | AudioConfig) -> None:
    """The keys both adapters' encoders share (model/multimodal.py)."""
    for key in ("width", "n_heads", "ffn_dim", "projector_dim"):
        _positive(f"{prefix}.{key}", getattr(e, key))
    _positive(f"{prefix}.depth", e.depth, allow_zero=True)
    if e.width % e.n_heads or (e.width // e.n_heads) % 2:
        raise ConfigError(
            f"{prefix}.width ({e.width}) must be divisible by {prefix}.n_heads ({e.n_heads}) into an even head "
            "width (the encoder reuses the decoder's attention, whose rotary pairs need it)"
        )


def _validate_vision(v: VisionConfig) -> None:
    for key in ("image_size", "patch_size", "channels"):
        _positive(f"model.vision.{key}", getattr(v, key))
    if v.image_size % v.patch_size:
        raise ConfigError(
            f"model.vision.image_size ({v.image_size}) must be divisible by model.vision.patch_size "
            f"({v.patch_size}): images are cut into whole square patches"
        )
    if v.chroma_blocks < 0 or (v.chroma_blocks and v.patch_size % v.chroma_blocks):
        raise ConfigError(
            f"model.vision.chroma_blocks ({v.chroma_blocks}) must be 0 (plain RGB patches) or divide "
            f"model.vision.patch_size ({v.patch_size}): each patch's chroma is averaged over whole blocks"
        )
    _validate_encoder("model.vision", v)


def _validate_audio(a: AudioConfig) -> None:
    for key in ("sample_rate", "max_samples", "n_fft", "hop_length", "n_mels", "log_floor"):
        _positive(f"model.audio.{key}", getattr(a, key))
    nyquist = a.sample_rate / 2
    f_max = a.f_max or nyquist
    if not 0 <= a.f_min < f_max <= nyquist:
        raise ConfigError(
            f"model.audio.f_min / f_max: need 0 <= f_min < f_max <= sample_rate / 2 ({nyquist:g} Hz); got "
            f"{a.f_min:g} and {a.f_max:g} (0 = sample_rate / 2)"
        )
    _validate_encoder("model.audio", a)
    if a.enabled:
        from open_r1_jax.model.audio_features import mel_filters

        empty = [
            i for i, row in enumerate(mel_filters(a.sample_rate, a.n_fft, a.n_mels, a.f_min, a.f_max)) if not row.any()
        ]
        if empty:
            raise ConfigError(
                f"model.audio.n_mels ({a.n_mels}): mel bands {empty[:5]} fall between two FFT bins and get none "
                f"(n_fft {a.n_fft} gives {a.n_fft // 2 + 1} bins); lower n_mels or raise n_fft"
            )


def validate_train(t: TrainConfig) -> None:
    for key in ("steps", "seq_len", "global_batch", "log_every", "eval_batches", "keep_checkpoints"):
        _positive(f"train.{key}", getattr(t, key))
    for key in ("micro_batch", "eval_every", "checkpoint_every", "warmup_steps", "weight_decay", "clip_norm"):
        _positive(f"train.{key}", getattr(t, key), allow_zero=True)
    if t.micro_batch and t.global_batch % t.micro_batch:
        raise ConfigError(
            f"train.global_batch ({t.global_batch}) must be divisible by train.micro_batch ({t.micro_batch})"
        )
    if not 0 < t.lr or not 0 <= t.min_lr <= t.lr:
        raise ConfigError(f"train.lr/min_lr: need 0 < lr and 0 <= min_lr <= lr (got {t.lr}, {t.min_lr})")
    if t.warmup_steps >= t.steps:  # the cosine after the warmup needs at least one step (optax raises)
        raise ConfigError(
            f"train.warmup_steps ({t.warmup_steps}) must be < train.steps ({t.steps}); accepted: 0..{t.steps - 1}"
        )
    if t.offload_dir and t.offload != "optimizer":
        raise ConfigError(
            f"train.offload_dir={t.offload_dir!r} moves the optimizer moments to disk: it needs "
            f"train.offload: optimizer (got {t.offload!r})"
        )
    if t.offload_dir and t.adapter_lr_scale != 1.0:  # the disk groups run optimizer_parts alone
        raise ConfigError(
            f"train.adapter_lr_scale={t.adapter_lr_scale} is not applied by train.offload_dir's disk tier; "
            "accepted there: 1.0"
        )
    if t.offload_group_layers < 0:
        raise ConfigError(
            f"train.offload_group_layers: got {t.offload_group_layers}; accepted: blocks per group >= 1, or 0 "
            "for one group"
        )


def validate_mesh(mesh: MeshConfig) -> None:
    for key in ("data", "fsdp", "expert"):
        _positive(f"mesh.{key}", getattr(mesh, key))
    if mesh.cpu_devices < 0:
        raise ConfigError(
            f"mesh.cpu_devices: got {mesh.cpu_devices}; accepted: 0 (one device per CPU core), 1 (no split) "
            "or a device count"
        )
    for rule in mesh.rules:
        name, _, axes = rule.partition("=")
        bad = [a for a in axes.split("+") if a and a not in ("data", "fsdp", "expert")]
        if not name or "=" not in rule or bad:
            raise ConfigError(
                f"mesh.rules: got {rule!r}; accepted: 'logical=axis' or 'logical=axis1+axis2' "
                "with axes among data, fsdp, expert (empty = replicated)"
            )


def validate_data(d: DataConfig) -> None:
    if not 0 <= d.heldout_percent < 100:
        raise ConfigError(f"data.heldout_percent: got {d.heldout_percent}; accepted: 0 <= x < 100")
    if d.eval_sources and d.kind != "corpus":
        raise ConfigError("data.eval_sources: only with data.kind 'corpus' (prepared data has its own held-out shards)")
    _positive("data.packing_bins", d.packing_bins)
    _positive("data.shards", d.shards, allow_zero=True)
    _positive("data.bpe_vocab_size", d.bpe_vocab_size)
    _validate_mixture(d)
    _validate_clean(d.clean)
    _positive("data.records_per_shard", d.records_per_shard)
    if d.kind == "arrayrecord" and not d.prepared_dir:
        raise ConfigError("data.prepared_dir: required with data.kind 'arrayrecord' (the --out of data.prepare)")


# ----------------------------------------------------------------------------- keys the run ignores


def _changed(section: Any, default: Any, prefix: str) -> list[str]:
    """Dotted keys of ``section`` whose values differ from ``default``'s (sub-sections recursed)."""
    out = []
    for f in dataclasses.fields(section):
        a, b = getattr(section, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(a):
            out += _changed(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append(f"{prefix}{f.name}")
    return out


def ignored_keys(cfg: Config) -> list[tuple[str, str]]:
    """(key, why) for every key set away from its default that the chosen path does not read.

    The Trainer logs one warning for each: a setting that silently does nothing is a bug report
    waiting to happen. (``data.prepare`` reads ``data.clean.*`` and ``data.mixture_*``; training does
    not, it reads the prepared shards.)"""
    out: list[tuple[str, str]] = []
    d, dd, t, m = cfg.data, DataConfig(), cfg.train, cfg.model

    def flag(keys, why):
        out.extend((k, why) for k in keys)

    if t.stage == "dpo":
        flag(_changed(d, dd, "data."), "train.stage 'dpo' reads preference pairs (dpo.*), not data.*")
        flag(
            [k for k in _changed(m, ModelConfig(), "model.") if k.split(".")[1] not in MODEL_RUNTIME_KEYS],
            "train.stage 'dpo' takes the architecture from dpo.init_from",
        )
        flag(
            [k for k in _changed(t, TrainConfig(), "train.") if k in ("train.seq_len", "train.eval_batches")],
            "DPO rows are dpo.max_len tokens and its evaluation reads every held-out pair",
        )
    else:
        flag(_changed(cfg.dpo, DPOConfig(), "dpo."), f"train.stage is '{t.stage}', not 'dpo'")
    if t.stage != "sft":
        flag(_changed(cfg.sft, SFTConfig(), "sft."), f"train.stage is '{t.stage}', not 'sft'")
    if t.stage != "distill":
        flag(_changed(cfg.distill, DistillConfig(), "distill."), f"train.stage is '{t.stage}', not 'distill'")
    if t.stage != "grpo":
        flag(_changed(cfg.grpo, GRPOConfig(), "grpo."), f"train.stage is '{t.stage}', not 'grpo'")
    if t.stage == "sft":
        flag(
            [k for k in _changed(d, dd, "data.") if k not in ("data.packing_bins",)],
            "train.stage 'sft' reads instruction data (sft.*), tokenised as train.init_from's data (bytes without it)",
        )
    if cfg.lora.rank == 0:
        flag([k for k in _changed(cfg.lora, LoRAConfig(), "lora.") if k != "lora.rank"], "lora.rank is 0 (LoRA off)")
    if t.stage in ("pretrain", "distill"):
        corpus_only = (
            "sources",
            "eval_sources",
            "text_key",
            "tokenizer",
            "bpe_vocab_size",
            "heldout_percent",
            "max_corpus_mb",
        )
        if d.kind == "corpus":
            keys = _changed(d, dd, "data.")
            flag(
                [k for k in keys if k.startswith(("data.clean.", "data.mixture_"))]
                + [k for k in keys if k in ("data.records_per_shard", "data.tokenizer_path")],
                "data.kind 'corpus' trains on data.sources; these keys are read by `python -m "
                "open_r1_jax.data.prepare` (data.kind 'arrayrecord' trains on its output)",
            )
        else:
            flag(
                [f"data.{k}" for k in corpus_only if getattr(d, k) != getattr(dd, k)],
                "data.kind 'arrayrecord' reads the prepared shards in data.prepared_dir",
            )
    if m.moe.capacity_factor and cfg.mesh.expert == 1:
        flag(["model.moe.capacity_factor"], "it limits the expert-parallel exchange; mesh.expert is 1")
    if m.dtype != "float16":
        flag(
            [k for k in _changed(t, TrainConfig(), "train.") if k in ("train.loss_scale", "train.loss_scale_period")],
            f"dynamic loss scaling is for model.dtype float16 (got {m.dtype})",
        )
    if m.attention.kind != "lsh" and not m.attention.lsh_layers:
        lsh = ("n_hashes", "n_buckets", "chunk_size", "shared_qk", "lsh_seed")
        flag(
            [f"model.attention.{k}" for k in lsh if getattr(m.attention, k) != getattr(AttentionConfig(), k)],
            "no layer uses LSH attention (model.attention.kind 'full' and no lsh_layers)",
        )
    if m.drn_layers == m.n_layers:
        flag([k for k in _changed(m.moe, MoEConfig(), "model.moe.")], "every layer is a DRN layer (no MoE layer)")
    if m.drn_layers == 0:
        flag([k for k in _changed(m.drn, DRNConfig(), "model.drn.")], "model.drn_layers is 0")
    for name, section, default in (("vision", m.vision, VisionConfig()), ("audio", m.audio, AudioConfig())):
        if not section.enabled:
            flag(_changed(section, default, f"model.{name}."), f"model.{name}.enabled is false (adapter off)")
    return out


def _validate_mixture(d: DataConfig) -> None:
    n = len(d.mixture_names)
    if len(d.mixture_weights) != n or (len(d.mixture_paths) not in (0, n)):
        raise ConfigError(
            f"data.mixture_names/mixture_paths/mixture_weights: need one entry per name (got {n} names, "
            f"{len(d.mixture_paths)} paths, {len(d.mixture_weights)} weights)"
        )
    if len(set(d.mixture_names)) != n or not all(x and "/" not in x for x in d.mixture_names):
        raise ConfigError(
            f"data.mixture_names: got {list(d.mixture_names)}; accepted: unique non-empty names without '/'"
        )
    if any(w < 0 for w in d.mixture_weights) or (n and not sum(d.mixture_weights) > 0):
        raise ConfigError(
            f"data.mixture_weights: got {list(d.mixture_weights)}; accepted: numbers >= 0 that sum to a positive number"
        )


def _validate_clean(c: CleanConfig) -> None:
    for key in (
        "min_tokens",
        "max_tokens",
        "minhash_bands",
        "minhash_rows",
        "minhash_ngram",
        "check_bands",
        "check_rows",
    ):
        _positive(f"data.clean.{key}", getattr(c, key))
    _positive("data.clean.samples_per_reason", c.samples_per_reason, allow_zero=True)
    if c.min_tokens > c.max_tokens:
        raise ConfigError(f"data.clean.min_tokens ({c.min_tokens}) must be <= data.clean.max_tokens ({c.max_tokens})")
    for key in ("minhash_threshold", "check_threshold", "min_lang_score", "max_bad_fraction"):
        v = getattr(c, key)
        if not 0 <= v <= 1:
            raise ConfigError(f"data.clean.{key}: got {v}; accepted: 0 <= x <= 1")


def _validate_dpo(cfg: Config) -> None:
    d = cfg.dpo
    if cfg.train.stage == "dpo" and not d.init_from:
        raise ConfigError(
            "dpo.init_from: required with train.stage 'dpo' (a pretraining run directory, a "
            "checkpoint directory, an export or a transformers Llama / Mixtral folder)"
        )
    if cfg.train.stage == "dpo" and cfg.train.init_from:
        raise ConfigError("train.init_from: not used by train.stage 'dpo'; its starting weights are dpo.init_from")
    _positive("dpo.beta", d.beta)
    if not 0 <= d.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing: got {d.label_smoothing}; accepted: 0 <= x < 0.5")
    if not 0 < d.max_prompt_len < d.max_len:
        raise ConfigError(f"dpo.max_prompt_len ({d.max_prompt_len}) must be > 0 and < dpo.max_len ({d.max_len})")
    # dpo.max_len <= the policy's max_seq_len is checked by the stage: the architecture is init_from's
    for key in ("demo_pairs", "demo_eval_pairs"):
        _positive(f"dpo.{key}", getattr(d, key))


def _validate_attention(a: AttentionConfig) -> None:
    _positive("model.attention.rope_theta", a.rope_theta)
    if a.rope_factor < 1:
        raise ConfigError(f"model.attention.rope_factor: got {a.rope_factor}; accepted: >= 1")
    if a.rope_scaling == "none" and a.rope_factor != 1:
        raise ConfigError(
            f"model.attention.rope_factor ({a.rope_factor}) has no effect with rope_scaling 'none'; "
            "accepted: rope_scaling 'linear' or 'ntk', or rope_factor 1"
        )
    _positive("model.attention.n_hashes", a.n_hashes)
    if a.decode_block < 0:
        raise ConfigError(f"model.attention.decode_block: got {a.decode_block}; accepted: >= 0 (0 = no blocks)")
    _positive("model.attention.chunk_size", a.chunk_size)
    if a.n_buckets != 1 and (a.n_buckets < 2 or a.n_buckets % 2):
        raise ConfigError(
            f"model.attention.n_buckets: got {a.n_buckets}; accepted: an even number >= 2 "
            "(argmax over [xR, -xR]), or 1 (no hashing: sorted by position only)"
        )


def _validate_lsh_length(a: AttentionConfig, t: TrainConfig) -> None:
    if (a.kind == "lsh" or a.lsh_layers) and t.seq_len > a.chunk_size and t.seq_len % a.chunk_size:
        raise ConfigError(
            f"train.seq_len ({t.seq_len}) must be a multiple of model.attention.chunk_size "
            f"({a.chunk_size}) with LSH attention (or <= it); other lengths are padded at a cost"
        )


def _validate_sft(cfg: Config) -> None:
    s = cfg.sft
    if not 0 <= s.max_bad_fraction <= 1:
        raise ConfigError(f"sft.max_bad_fraction: got {s.max_bad_fraction}; accepted: 0 <= x <= 1")
    if not 0 <= s.demo_blind < 1:
        raise ConfigError(f"sft.demo_blind: got {s.demo_blind}; accepted: 0 <= x < 1")
    for key in ("demo_examples", "demo_eval_examples", "demo_questions", "demo_image_rows"):
        _positive(f"sft.{key}", getattr(s, key))
    m = cfg.model
    if cfg.train.stage == "sft" and s.demo == "multimodal" and not s.train_path:
        if not (m.vision.enabled or m.audio.enabled):
            raise ConfigError("sft.demo 'multimodal' needs model.vision.enabled or model.audio.enabled (or both)")
        if m.audio.enabled and m.audio.max_samples < m.audio.sample_rate:
            raise ConfigError(
                f"sft.demo 'multimodal': model.audio.max_samples ({m.audio.max_samples}) holds under 1 s at "
                f"model.audio.sample_rate ({m.audio.sample_rate}); the demo's beep clips need 1 s"
            )


def _validate_distill(cfg: Config) -> None:
    d = cfg.distill
    if cfg.train.stage == "distill" and not d.teacher:
        raise ConfigError(
            "distill.teacher: required with train.stage 'distill' (a run directory, a checkpoint, an export "
            "or a transformers Llama / Mixtral folder)"
        )
    if not 0 <= d.alpha <= 1:
        raise ConfigError(f"distill.alpha: got {d.alpha}; accepted: 0 <= x <= 1")
    _positive("distill.temperature", d.temperature)


def _validate_lora(cfg: Config) -> None:
    from open_r1_jax.model.lora import TARGETS

    lo = cfg.lora
    _positive("lora.rank", lo.rank, allow_zero=True)
    _positive("lora.alpha", lo.alpha)
    if lo.dropout != 0:
        raise ConfigError(
            f"lora.dropout: got {lo.dropout}; accepted: 0. Adapters are folded into their matrix "
            "(open_r1_jax/model/lora.py), which cannot drop the adapter's input per token as PEFT's "
            "lora_dropout does (PEFT's own ParamWrapper refuses it for the same reason)"
        )
    unknown = [t for t in lo.targets if t not in TARGETS]
    if unknown or not lo.targets:
        raise ConfigError(f"lora.targets: got {list(lo.targets)}; accepted: a non-empty list of {', '.join(TARGETS)}")
    if len(set(lo.targets)) != len(lo.targets):
        raise ConfigError(f"lora.targets: {list(lo.targets)} names a target twice")


def _validate_grpo(cfg: Config) -> None:
    g, t = cfg.grpo, cfg.train
    if t.stage == "grpo" and not t.init_from:
        raise ConfigError(
            "train.init_from: required with train.stage 'grpo' (the cold-start policy: an SFT or pretraining "
            "run, a checkpoint, an export or a transformers folder)"
        )
    for key in (
        "num_generations",
        "max_new_tokens",
        "num_iterations",
        "oversample",
        "demo_examples",
        "demo_eval_examples",
    ):
        _positive(f"grpo.{key}", getattr(g, key))
    if g.process_reward and g.process_weight <= 0:
        raise ConfigError(f"grpo.process_weight: got {g.process_weight}; accepted: > 0 (or grpo.process_reward: '')")
    if t.stage == "grpo" and (g.num_generations < 2 or t.global_batch % g.num_generations):
        raise ConfigError(
            f"grpo.num_generations ({g.num_generations}) must be >= 2 and divide train.global_batch "
            f"({t.global_batch}): the batch holds whole groups of completions"
        )
    if t.stage == "grpo" and t.micro_batch and t.micro_batch % g.num_generations:
        raise ConfigError(f"train.micro_batch ({t.micro_batch}) must be a multiple of grpo.num_generations")
    if t.stage == "grpo" and g.max_new_tokens >= t.seq_len:
        raise ConfigError(
            f"grpo.max_new_tokens ({g.max_new_tokens}) must be < train.seq_len ({t.seq_len}): a row holds the "
            "prompt and its completion"
        )
    _positive("grpo.temperature", g.temperature)
    if not 0 < g.top_p <= 1:
        raise ConfigError(f"grpo.top_p: got {g.top_p}; accepted: 0 < x <= 1")
    if not 0 < g.epsilon < 1 or g.epsilon_high < 0:
        raise ConfigError(f"grpo.epsilon ({g.epsilon}) must be in (0, 1) and grpo.epsilon_high ({g.epsilon_high}) >= 0")
    if g.beta < 0:
        raise ConfigError(f"grpo.beta: got {g.beta}; accepted: >= 0")
