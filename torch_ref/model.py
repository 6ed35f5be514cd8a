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

Files: ``config.py`` (TorchModelConfig), ``layers.py`` (norm, rotary, attention, SwiGLU), ``moe.py``
(experts, routers, DRN and MoE layers), this file (blocks and the decoder). Parameter names are those
of ``open_r1_jax.name_map.to_torch_state``. No file of the reference imports jax or flax.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_ref.config import TorchModelConfig
from torch_ref.layers import Attention, LSHAttention, RMSNorm, attention_mask
from torch_ref.losses import bias_update
from torch_ref.moe import DRNFeedForward, MoEFeedForward

INIT_STD = 0.02  # only for a freshly constructed reference; parity tests copy weights in


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
