"""The model's sections of the config tree: what a model is (``ModelConfig`` and its sub-sections, each
layer receiving only its own) and ``MODEL_RUNTIME_KEYS``, the keys that say how it computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    # 0: a patch is its p*p*C pixel values (ViT). k > 0: a patch is its brightness v (the max over the
    # channels) at full resolution plus its chroma (pixel - v) averaged over a k x k grid of blocks,
    # p*p + k*k*C values (chroma subsampling, as JPEG's 4:2:0): the shape filters are then the same
    # for every colour (model/multimodal.py, patch_features)
    chroma_blocks: int = 0
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
    # true: each frame's log-mel minus its log energy (logsumexp over the bands: the spectrum's shape),
    # then that log energy as one more feature (M+1; HTK's "_E" energy term). Loudness over time, what
    # counting and timing read, is then the same feature at every pitch (model/audio_features.py)
    frame_energy: bool = False
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
