"""The "sandwich" decoder in plain PyTorch: the readable fp32 reference of ``open_r1_jax.model``.

Shape letters used in comments:
    B batch            T time (query)       S time (key)          D model width (d_model)
    H query heads      G key/value heads    R = H/G heads per kv  K head width (head_dim)
    E experts          A active experts per token (top_k)         F expert hidden width (ffn)
    N = B*T tokens     V vocabulary         L MoE layers

Structure (every block is pre-norm: x += attn(norm(x)); x += ffn(norm(x))):

    tokens -> embed -> [DRN blocks] x drn_layers -> [MoE blocks] x (n_layers - drn_layers)
           -> final RMSNorm -> LM head (or the embedding, when tied) -> logits [B,T,V] fp32

Everything is eager and fp32, and mirrors the JAX model formula for formula:
- RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, computed in fp32.
- Rotary: "rotate half" convention, angles from per-token positions.
- Attention: grouped-query; two tokens attend when the key is not after the query and both are in
  the same segment (segment 0 = padding). Masked scores are set to the finite MASK_VALUE.
- LSH attention (layers in attention.lsh_layers, or all with kind "lsh"): Reformer hashing, sort by
  (bucket, time), chunks that also see the previous chunk, rounds combined by logsumexp
  (``torch_ref/lsh_attention.py``); the same steps as ``open_r1_jax/model/lsh_attention.py``. The
  random rotations are an explicit argument of ``forward`` (JAX draws them from its rng), so the two agree exactly.
- DRN FFN: softmax over all experts, every expert on every token, dense mixture.
- MoE FFN: top-k softmax router (Mixtral) or DeepSeek-V3 sigmoid router (select by sigmoid + bias,
  weight by the unbiased sigmoid), times route_scale; optional shared experts; auxiliary losses.
  Only the dense dispatch exists here: every expert runs, outputs mixed by the routing weights.
- Image / audio adapters (``vision`` / ``audio`` sections, when enabled): ``torch_ref/multimodal.py``;
  their prefix goes in front of the text, and logits are returned for the text positions only.

Parameter names are those of ``open_r1_jax.name_map.to_torch_state``. This module never imports
jax or flax.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.losses import bias_update
from torch_ref.lsh_attention import MASK_VALUE, lsh_attention  # one finite mask value for both attentions

INIT_STD = 0.02  # only for a freshly constructed reference; parity tests copy weights in


# ----------------------------------------------------------------------------- configuration


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


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rotary(
    x: torch.Tensor, positions: torch.Tensor, theta: float, scaling: str = "none", factor: float = 1.0
) -> torch.Tensor:
    """x [B,T,*,K], positions [B,T] -> x rotated, "rotate half" pairs (i, i + K/2).
    scaling "linear": positions / factor; "ntk": base theta * factor^(K/(K-2))."""
    k = x.shape[-1]
    if scaling == "ntk":
        theta = theta * factor ** (k / max(k - 2, 1))
    inv_freq = 1.0 / (theta ** (torch.arange(0, k, 2, dtype=torch.float32, device=x.device) / k))  # [K/2]
    pos = positions.float()
    if scaling == "linear":
        pos = pos / factor
    angles = pos[..., None] * inv_freq  # [B,T,K/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [B,T,1,K]
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * torch.cos(angles) + rotated * torch.sin(angles)).to(x.dtype)


def attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B,T] -> [B,1,1,T,S] bool: key not after query and same segment."""
    t = segment_ids.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=segment_ids.device))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None, None]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, cfg: AttentionConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope = (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B,T,D], positions [B,T], mask [B,1,1,T,S] -> [B,T,D]."""
        b, t, _ = x.shape
        h, g, kd = self.n_heads, self.n_kv_heads, self.head_dim
        q = rotary(self.q_proj(x).view(b, t, h, kd), positions, *self.rope)  # [B,T,H,K]
        k = rotary(self.k_proj(x).view(b, t, g, kd), positions, *self.rope)  # [B,S,G,K]
        v = self.v_proj(x).view(b, t, g, kd)  # [B,S,G,K]
        q = q.view(b, t, g, h // g, kd)  # [B,T,G,R,K]
        scores = torch.einsum("btgrk,bsgk->bgrts", q, k).float()  # [B,G,R,T,S]
        scores = torch.where(mask, scores * kd**-0.5, torch.full_like(scores, MASK_VALUE))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.einsum("bgrts,bsgk->btgrk", probs, v)  # [B,T,G,R,K]
        return self.o_proj(out.reshape(b, t, h * kd))


# ----------------------------------------------------------------------------- LSH attention
# The attention itself is torch_ref/lsh_attention.py; here the projections and rotary around it.


class LSHAttention(nn.Module):
    """Projections and rotary of ``Attention`` (no k_proj with shared QK) around ``lsh_attention``."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, cfg: AttentionConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim, self.cfg = n_heads, n_kv_heads, head_dim, cfg
        self.rope = (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        if not cfg.shared_qk:
            self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def forward(self, x, positions, segment_ids, rotations):
        """x [B,T,D], positions/segment_ids [B,T], rotations [K,N,U/2] -> [B,T,D]."""
        b, t, _ = x.shape
        h, g, kd, cfg = self.n_heads, self.n_kv_heads, self.head_dim, self.cfg
        q = rotary(self.q_proj(x).view(b, t, h, kd), positions, *self.rope)
        k = None if cfg.shared_qk else rotary(self.k_proj(x).view(b, t, g, kd), positions, *self.rope)
        v = self.v_proj(x).view(b, t, g, kd)
        out = lsh_attention(q, k, v, segment_ids, rotations, cfg.n_buckets, cfg.chunk_size, cfg.shared_qk)
        return self.o_proj(out.reshape(b, t, h * kd))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the shared experts, merged into one network."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E stacked SwiGLU experts: w_gate/w_up [E,D,F], w_down [E,F,D] (JAX layout, not transposed)."""

    def __init__(self, n_experts: int, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_down = nn.Parameter(torch.empty(n_experts, ffn_dim, d_model))

    def forward(self, x: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
        """Dense dispatch. x [N,D], combine [N,E] routing weights (0 where not routed) -> [N,D]."""
        g = torch.einsum("nd,edf->nef", x, self.w_gate)  # [N,E,F]
        u = torch.einsum("nd,edf->nef", x, self.w_up)  # [N,E,F]
        hidden = F.silu(g) * u * combine[:, :, None].to(x.dtype)
        return torch.einsum("nef,efd->nd", hidden, self.w_down)


# ----------------------------------------------------------------------------- routing


def topk_softmax(logits: torch.Tensor, k: int, renormalize: bool):
    """logits [N,E] -> (weights [N,A], experts [N,A], probs [N,E])."""
    probs = torch.softmax(logits, dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts, probs


def topk_sigmoid_bias(logits: torch.Tensor, bias: torch.Tensor, k: int, renormalize: bool):
    """DeepSeek-V3: experts selected by top-k of sigmoid + bias, weighted by the unbiased sigmoid."""
    scores = torch.sigmoid(logits)
    _, experts = torch.topk(scores + bias.detach(), k, dim=-1)
    weights = torch.gather(scores, -1, experts)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    probs = scores / scores.sum(dim=-1, keepdim=True)
    return weights, experts, probs


def aux_losses(logits, probs, experts, mask, k: int) -> dict[str, torch.Tensor]:
    """logits/probs [B,T,E], experts [B,T,A], mask [B,T] -> raw aux losses and loads (padding left out)."""
    n_experts = logits.shape[-1]
    m = mask.float()
    n_valid = torch.clamp(m.sum(), min=1.0)
    onehot = F.one_hot(experts, n_experts).float()  # [B,T,A,E]
    counts = torch.einsum("btae,bt->e", onehot, m)  # [E]
    p_mean = torch.einsum("bte,bt->e", probs, m) / n_valid
    balance = n_experts * torch.sum(counts / (n_valid * k) * p_mean)
    row_valid = torch.clamp(m.sum(dim=1), min=1.0)  # [B]
    row_counts = torch.einsum("btae,bt->be", onehot, m)
    f = n_experts / (k * row_valid[:, None]) * row_counts
    p_row = torch.einsum("bte,bt->be", probs, m) / row_valid[:, None]
    seq_balance = torch.mean(torch.sum(f * p_row, dim=-1))
    z = torch.sum(torch.square(torch.logsumexp(logits, dim=-1)) * m) / n_valid
    return {"balance_loss": balance, "seq_balance_loss": seq_balance, "z_loss": z, "expert_counts": counts}


# ----------------------------------------------------------------------------- feed-forward layers


class DRNFeedForward(nn.Module):
    """Dynamic routing network: out = sum_e softmax(router(x))_e * expert_e(x), all experts."""

    def __init__(self, d_model: int, cfg: DRNConfig):
        super().__init__()
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        self.experts = Experts(cfg.n_experts, d_model, cfg.expert_ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        b, t, d = x.shape
        probs = torch.softmax(self.router(x.float()), dim=-1)  # [B,T,E]
        out = self.experts(x.reshape(b * t, d), probs.reshape(b * t, -1))
        return out.view(b, t, d), {}


class MoEFeedForward(nn.Module):
    """Sparse top-k routed experts (dense dispatch) + optional shared experts, with aux losses."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        if cfg.router not in ("softmax", "sigmoid"):
            raise ValueError(f"moe.router: got {cfg.router!r}; accepted: 'softmax' or 'sigmoid'")
        self.cfg = cfg
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        if cfg.router == "sigmoid":
            self.register_buffer("router_bias", torch.zeros(cfg.n_experts))
        self.experts = Experts(cfg.n_experts, d_model, cfg.expert_ffn_dim)
        if cfg.n_shared_experts:
            self.shared = SwiGLU(d_model, cfg.n_shared_experts * cfg.expert_ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x [B,T,D], mask [B,T] (True = real token) -> (out [B,T,D], aux dict)."""
        cfg = self.cfg
        b, t, d = x.shape
        logits = self.router(x.float())  # [B,T,E]
        if cfg.router == "sigmoid":
            weights, experts, probs = topk_sigmoid_bias(logits, self.router_bias, cfg.top_k, cfg.renormalize)
        else:
            weights, experts, probs = topk_softmax(logits, cfg.top_k, cfg.renormalize)
        weights = weights * cfg.route_scale  # [B,T,A]
        aux = aux_losses(logits, probs, experts, mask, cfg.top_k)
        aux["expert_ids"] = experts
        aux["dropped"] = torch.zeros((), dtype=torch.int32)  # dense dispatch never drops (as JAX's aux)
        combine = torch.zeros_like(probs).scatter(-1, experts, weights)  # [B,T,E], 0 off the top-k
        out = self.experts(x.reshape(b * t, d), combine.reshape(b * t, -1)).view(b, t, d)
        if cfg.n_shared_experts:
            out = out + self.shared(x)
        return out, aux


# ----------------------------------------------------------------------------- the decoder


class Block(nn.Module):
    def __init__(self, cfg: TorchModelConfig, kind: str, lsh: bool = False):
        super().__init__()
        self.kind = kind  # "drn" or "moe"
        self.lsh = lsh
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        attention = LSHAttention if lsh else Attention
        self.attn = attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attention)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if kind == "drn":
            self.ffn = DRNFeedForward(cfg.d_model, cfg.drn)
        else:
            self.ffn = MoEFeedForward(cfg.d_model, cfg.moe)

    def forward(self, x, positions, mask, token_mask, segment_ids=None, rotations=None):
        if self.lsh:
            x = x + self.attn(self.attn_norm(x), positions, segment_ids, rotations)
        else:
            x = x + self.attn(self.attn_norm(x), positions, mask)
        y, aux = self.ffn(self.ffn_norm(x), token_mask)
        return x + y, aux


class Transformer(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.cfg = cfg
        self.return_aux = True  # forward returns (logits, aux); load_pretrained sets False (logits)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        lsh = lambda i: cfg.attention.kind == "lsh" or i in cfg.attention.lsh_layers
        self.blocks = nn.ModuleList(
            [Block(cfg, "drn" if i < cfg.drn_layers else "moe", lsh(i)) for i in range(cfg.n_layers)]
        )
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        from torch_ref.multimodal import AudioAdapter, VisionAdapter  # it builds on this file's layers

        self.vision = VisionAdapter(cfg.vision, cfg.d_model, cfg.norm_eps) if cfg.vision.enabled else None
        self.audio = AudioAdapter(cfg.audio, cfg.d_model, cfg.norm_eps) if cfg.audio.enabled else None
        self.reset_parameters()

    def reset_parameters(self, std: float = INIT_STD) -> None:
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        rotations: dict | None = None,
        images: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        has_audio: torch.Tensor | None = None,
    ):
        """tokens [B,T] long -> (logits [B,T,V] fp32, aux dict).

        images [B,H,W,C] / audio [B,S] with has_image / has_audio [B] bool (None = every row): the
        adapters' prefix goes in front of the text (``torch_ref/multimodal.py``); logits stay [B,T,V].

        rotations: {layer index: [K, n_hashes, n_buckets/2] tensor} for every LSH layer (the JAX model
        draws them as ``open_r1_jax.model.lsh_attention.lsh_rotations(fold_in(rng, i), ...)``).

        aux: ``aux_loss`` (coefficient-weighted sum over MoE layers), per-layer ``balance_loss``,
        ``seq_balance_loss``, ``z_loss`` [L], ``expert_counts`` [L,E], ``expert_ids`` [L,B,T,A].
        """
        b, t = tokens.shape
        x = self.embed(tokens)  # [B,T,D]
        if positions is None:
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        if segment_ids is None:
            segment_ids = torch.ones(b, t, dtype=torch.long, device=tokens.device)
        from torch_ref.multimodal import build_prefix, prepend

        n_prefix = 0
        prefix = build_prefix(self.vision, self.audio, images, has_image, audio, has_audio)
        if prefix is not None:
            n_prefix = prefix[0].shape[1]
            x, positions, segment_ids = prepend(*prefix, x, positions, segment_ids)  # [B,P+T,...]
        lsh = [i for i, block in enumerate(self.blocks) if block.lsh]
        missing = sorted(set(lsh) - set(rotations or {}))
        if missing:
            raise ValueError(f"rotations: LSH layer(s) {missing} need a [K, n_hashes, n_buckets/2] tensor each")
        mask = attention_mask(segment_ids) if len(lsh) < len(self.blocks) else None
        token_mask = segment_ids > 0
        layer_aux = []
        for i, block in enumerate(self.blocks):
            x, aux = block(x, positions, mask, token_mask, segment_ids, (rotations or {}).get(i))
            if aux:
                layer_aux.append(aux)
        x = self.final_norm(x[:, n_prefix:])
        # the head module is called (not its weight read) so that a LoRA wrapper applies (torch_ref/lora.py)
        logits = (x @ self.embed.weight.T if self.cfg.tie_embeddings else self.lm_head(x)).float()
        aux = self._collect(layer_aux)
        return (logits, aux) if self.return_aux else logits

    def _collect(self, layer_aux: list[dict]) -> dict[str, torch.Tensor]:
        moe = self.cfg.moe
        if not layer_aux:
            return {"aux_loss": torch.zeros((), dtype=torch.float32, device=self.embed.weight.device)}
        out = {k: torch.stack([a[k] for a in layer_aux]) for k in layer_aux[0]}
        out["aux_loss"] = (
            moe.balance_coef * out["balance_loss"].sum()
            + moe.seq_balance_coef * out["seq_balance_loss"].sum()
            + moe.z_loss_coef * out["z_loss"].sum()
        )
        return out

    @torch.no_grad()
    def update_router_bias(self, expert_counts: torch.Tensor) -> None:
        """DeepSeek-V3 bias balancing from aux["expert_counts"] [L,E] (sigmoid router only)."""
        moe_blocks = [blk for blk in self.blocks if blk.kind == "moe"]
        for blk, counts in zip(moe_blocks, expert_counts):
            if hasattr(blk.ffn, "router_bias"):
                blk.ffn.router_bias.copy_(bias_update(blk.ffn.router_bias, counts, self.cfg.moe.bias_update_rate))
