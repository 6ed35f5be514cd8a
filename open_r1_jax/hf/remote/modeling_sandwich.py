"""The open-r1-jax "sandwich" decoder as a Hugging Face transformers model (remote code).

Written into every export by ``python -m open_r1_jax.export`` and loaded with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``. Self-contained: torch and
transformers only. Formula for formula it is the inference path of ``torch_ref/model.py`` (itself the
mirror of the JAX model), plus a KV cache for ``generate()``; parameter names are torch_ref's, so the
export's safetensors load without renaming. One file, as transformers' own models are.

Shape letters: B batch, T new tokens, S cached + new tokens, D width, H query heads, G key/value
heads, R = H/G, K head width, E experts, A experts per token, F expert hidden width, V vocabulary.

Not here: LSH attention layers (the export refuses such models), the MoE auxiliary losses and the
router-bias update (training lives in open-r1-jax; ``labels`` give the plain next-token loss).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_sandwich import SandwichConfig

MASK_VALUE = -1e30  # finite, so a fully masked row (padding) gives no NaN; the JAX model uses the same value
# transformers 5 names the cache argument and output field "cache", 4.x "past_key_values"
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rotary(x, positions, theta, scaling="none", factor=1.0):
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
    return (x32 * torch.cos(angles) + torch.cat([-x2, x1], dim=-1) * torch.sin(angles)).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query causal attention; keys and values of earlier tokens come from the cache."""

    def __init__(self, config, layer_idx):
        super().__init__()
        d, self.h, self.g, self.kd = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
        att = config.attention
        self.rope = (att["rope_theta"], att["rope_scaling"], att["rope_factor"])
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(d, self.h * self.kd, bias=False)
        self.k_proj = nn.Linear(d, self.g * self.kd, bias=False)
        self.v_proj = nn.Linear(d, self.g * self.kd, bias=False)
        self.o_proj = nn.Linear(self.h * self.kd, d, bias=False)

    def forward(self, x, positions, mask, cache):
        """x [B,T,D], positions [B,T], mask [B,1,1,T,S] -> [B,T,D]."""
        b, t, _ = x.shape
        h, g, kd = self.h, self.g, self.kd
        q = rotary(self.q_proj(x).view(b, t, h, kd), positions, *self.rope)
        k = rotary(self.k_proj(x).view(b, t, g, kd), positions, *self.rope).transpose(1, 2)  # [B,G,T,K]
        v = self.v_proj(x).view(b, t, g, kd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B,G,S,K]
        q = q.view(b, t, g, h // g, kd)  # [B,T,G,R,K]
        scores = torch.einsum("btgrk,bgsk->bgrts", q, k).float()  # [B,G,R,T,S]
        scores = torch.where(mask, scores * kd**-0.5, torch.full_like(scores, MASK_VALUE))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.einsum("bgrts,bgsk->btgrk", probs, v)
        return self.o_proj(out.reshape(b, t, h * kd))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the shared experts, merged into one network."""

    def __init__(self, d_model, ffn_dim):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E stacked SwiGLU experts: w_gate/w_up [E,D,F], w_down [E,F,D] (used as x @ w)."""

    def __init__(self, n_experts, d_model, ffn_dim):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, ffn_dim))
        self.w_down = nn.Parameter(torch.empty(n_experts, ffn_dim, d_model))

    def forward(self, x, combine=None, weights=None, experts=None):
        """``dense`` with ``combine``, else ``sparse``. Callers go through forward (not the methods)
        so that wrappers of this module's parameters apply (PEFT's LoRA ``ParamWrapper``)."""
        return self.dense(x, combine) if combine is not None else self.sparse(x, weights, experts)

    def dense(self, x, combine):
        """Every expert on every token. x [N,D], combine [N,E] -> [N,D]."""
        g = torch.einsum("nd,edf->nef", x, self.w_gate)
        u = torch.einsum("nd,edf->nef", x, self.w_up)
        return torch.einsum("nef,efd->nd", F.silu(g) * u * combine[:, :, None].to(x.dtype), self.w_down)

    def sparse(self, x, weights, experts):
        """Each expert on its routed tokens only. x [N,D], weights/experts [N,A] -> [N,D]."""
        out = torch.zeros_like(x)
        for e in torch.unique(experts).tolist():
            token, slot = torch.nonzero(experts == e, as_tuple=True)
            xe = x[token]
            y = (F.silu(xe @ self.w_gate[e]) * (xe @ self.w_up[e])) @ self.w_down[e]
            out.index_add_(0, token, y * weights[token, slot, None].to(x.dtype))
        return out


class DRNFeedForward(nn.Module):
    """Dynamic routing: out = sum_e softmax(router(x))_e * expert_e(x), all experts."""

    def __init__(self, config):
        super().__init__()
        self.router = nn.Linear(config.d_model, config.drn["n_experts"], bias=False)
        self.experts = Experts(config.drn["n_experts"], config.d_model, config.drn["expert_ffn_dim"])

    def forward(self, x):
        b, t, d = x.shape
        probs = torch.softmax(F.linear(x.float(), self.router.weight.float()), dim=-1)  # [B,T,E]
        return self.experts(x.reshape(b * t, d), combine=probs.reshape(b * t, -1)).view(b, t, d)


class MoEFeedForward(nn.Module):
    """Top-k routed experts (softmax as Mixtral, or DeepSeek-V3 sigmoid + bias) + optional shared experts."""

    def __init__(self, config):
        super().__init__()
        m = self.cfg = config.moe
        if m["router"] not in ("softmax", "sigmoid"):
            raise ValueError(f"moe.router: got {m['router']!r}; accepted: 'softmax' or 'sigmoid'")
        self.router = nn.Linear(config.d_model, m["n_experts"], bias=False)
        if m["router"] == "sigmoid":
            self.register_buffer("router_bias", torch.zeros(m["n_experts"]))
        self.experts = Experts(m["n_experts"], config.d_model, m["expert_ffn_dim"])
        if m["n_shared_experts"]:
            self.shared = SwiGLU(config.d_model, m["n_shared_experts"] * m["expert_ffn_dim"])

    def forward(self, x):
        m = self.cfg
        b, t, d = x.shape
        logits = F.linear(x.float(), self.router.weight.float()).reshape(b * t, -1)  # [N,E] fp32
        if m["router"] == "sigmoid":  # select by sigmoid + bias, weight by the unbiased sigmoid
            scores = torch.sigmoid(logits)
            experts = torch.topk(scores + self.router_bias.float(), m["top_k"], dim=-1).indices
            weights = torch.gather(scores, -1, experts)
            eps = 1e-20
        else:
            weights, experts = torch.topk(torch.softmax(logits, dim=-1), m["top_k"], dim=-1)
            eps = 0.0
        if m["renormalize"]:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + eps)
        out = self.experts(x.reshape(b * t, d), weights=weights * m["route_scale"], experts=experts).view(b, t, d)
        if m["n_shared_experts"]:
            out = out + self.shared(x)
        return out


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = DRNFeedForward(config) if layer_idx < config.drn_layers else MoEFeedForward(config)

    def forward(self, x, positions, mask, cache):
        x = x + self.attn(self.attn_norm(x), positions, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class SandwichPreTrainedModel(PreTrainedModel):
    config_class = SandwichConfig
    base_model_prefix = "sandwich"
    _no_split_modules = ["Block"]
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, Experts):
            for p in (module.w_gate, module.w_up, module.w_down):
                nn.init.normal_(p, 0.0, std)


class SandwichForCausalLM(SandwichPreTrainedModel, GenerationMixin):
    """tokens -> embed -> DRN blocks -> MoE blocks -> final norm -> LM head (or the tied embedding)."""

    def __init__(self, config):
        super().__init__(config)
        att = config.attention
        if att.get("kind", "full") != "full" or att.get("lsh_layers"):
            raise ValueError("attention.kind 'lsh' / attention.lsh_layers: LSH layers are not implemented here")
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def get_output_embeddings(self):
        return None if self.config.tie_embeddings else self.lm_head

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """input_ids [B,T]; attention_mask [B,S] (1 = token, 0 = padding; S = cached + new) -> logits [B,T,V]."""
        cache = cache if cache is not None else past_key_values
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B,T,D]
        b, t, _ = x.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        slots = torch.arange(past, past + t, device=x.device)  # cache slot of each new token
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=x.device)
        valid = attention_mask[:, -(past + t) :].bool()  # [B,S]
        if position_ids is None:  # positions count real tokens only (left padding starts at 0, as in open-r1-jax)
            position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        causal = torch.arange(past + t, device=x.device)[None, :] <= slots[:, None]  # [T,S]
        mask = (causal[None] & valid[:, None, :])[:, None, None]  # [B,1,1,T,S]
        for block in self.blocks:
            x = block(x, position_ids, mask, cache)
        x = self.final_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        # the head module is called (not its weight read) so that wrappers such as PEFT's LoRA apply
        logits = (x @ self.embed.weight.T if self.config.tie_embeddings else self.lm_head(x)).float()
        loss = None
        if labels is not None:
            v = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1).to(logits.device))
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
