"""The reference's model config: the model section of the JAX config, less the keys that only concern
JAX execution (``TorchModelConfig.JAX_ONLY``, accepted and ignored); unknown keys raise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AttentionConfig:
    kind: str = "full"  # "full" or "lsh" (every layer)
    lsh_layers: tuple = ()  # layers with LSH attention
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # "none", "linear" or "ntk"
    rope_factor: float = 1.0
    n_hashes: int = 2
    n_buckets: int = 32
    chunk_size: int = 64
    shared_qk: bool = False


@dataclass(frozen=True)
class DRNConfig:
    n_experts: int = 4
    expert_ffn_dim: int = 64


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int = 8
    top_k: int = 2
    expert_ffn_dim: int = 64
    n_shared_experts: int = 0
    router: str = "softmax"  # "softmax" or "sigmoid"
    renormalize: bool = True
    route_scale: float = 1.0
    balance_coef: float = 0.01
    seq_balance_coef: float = 0.0
    z_loss_coef: float = 0.001
    bias_update_rate: float = 0.001


@dataclass(frozen=True)
class VisionConfig:  # the image adapter (torch_ref/multimodal.py)
    enabled: bool = False
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    chroma_blocks: int = 0  # > 0: brightness patches + chroma block means (see torch_ref/multimodal.py)
    resize_method: str = "linear"  # "linear" (bilinear, antialiased) or "nearest"
    width: int = 64
    depth: int = 2
    n_heads: int = 4
    ffn_dim: int = 128
    projector_dim: int = 128


@dataclass(frozen=True)
class AudioConfig:  # the audio adapter (torch_ref/multimodal.py)
    enabled: bool = False
    sample_rate: int = 16000
    max_samples: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 0.0
    log_floor: float = 1e-10
    frame_energy: bool = False  # log-mel minus each frame's log energy, then that energy (M+1 features)
    width: int = 64
    depth: int = 2
    n_heads: int = 4
    ffn_dim: int = 128
    projector_dim: int = 128


SECTIONS = ("attention", "drn", "moe", "vision", "audio")


@dataclass(frozen=True)
class TorchModelConfig:
    """The model section of the JAX config, less the keys that only concern JAX execution."""

    vocab_size: int = 272
    d_model: int = 64
    n_layers: int = 4
    drn_layers: int = 1
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    drn: DRNConfig = field(default_factory=DRNConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    # Keys of the JAX model section that change how JAX computes, not what: accepted and ignored.
    JAX_ONLY = {
        "": ("dtype", "kernels", "activation_checkpoint", "remat_policy", "max_seq_len", "init_std"),
        "attention": ("lsh_seed", "decode_block", "lsh_bucket_index"),
        "drn": (),
        "moe": ("dispatch", "grouped_impl", "block_size", "capacity_factor", "dense_token_experts"),
        "vision": (),
        "audio": (),
    }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TorchModelConfig:
        """Model section (``{"vocab_size": ..., "moe": {...}}``) or a whole config with a "model" key."""
        if isinstance(d.get("model"), dict):
            d = d["model"]
        d = dict(d)
        att = dict(d.pop("attention", None) or {})
        if "lsh_layers" in att:
            att["lsh_layers"] = tuple(att["lsh_layers"])
        subs = {
            "attention": (AttentionConfig, att),
            "drn": (DRNConfig, dict(d.pop("drn", None) or {})),
            "moe": (MoEConfig, dict(d.pop("moe", None) or {})),
            "vision": (VisionConfig, dict(d.pop("vision", None) or {})),
            "audio": (AudioConfig, dict(d.pop("audio", None) or {})),
        }
        kwargs = {
            name: _section(sub_cls, values, cls.JAX_ONLY[name], f"{name}.") for name, (sub_cls, values) in subs.items()
        }
        top = _section(None, d, cls.JAX_ONLY[""], "", cls)
        return cls(**top, **kwargs)


def _section(sub_cls, values: dict, ignored: tuple, prefix: str, target=None):
    """Keep the fields of ``sub_cls`` (or of ``target``'s scalar fields), drop JAX-only keys."""
    cls = target or sub_cls
    names = {f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS}
    unknown = sorted(set(values) - names - set(ignored))
    if unknown:
        raise ValueError(f"unknown model config key(s) {[prefix + k for k in unknown]}; accepted: {sorted(names)}")
    kept = {k: v for k, v in values.items() if k in names}
    return kept if target is not None else sub_cls(**kept)
