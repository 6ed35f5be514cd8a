"""LoRA for the reference model, written as PEFT computes it (independently of ``open_r1_jax/model/lora.py``).

- Linear layers (attention projections, shared experts, LM head): ``LoRALinear`` computes the
  *unmerged* ``base(x) + s * B(A(x))`` with ``A = nn.Linear(in, r)``, ``B = nn.Linear(r, out)``, as
  PEFT's ``lora.Linear`` does; the JAX model folds ``W + s A B`` instead, so the parity test checks
  that the two forms agree, gradients included.
- Stacked expert weights [E,I,O]: a parametrization replaces the weight by ``W + s * A @ B`` with
  A [E,I,r] and B [E,r,O] (PEFT's ``ParamWrapper`` folds too: a per-expert product cannot be factored
  out of the expert loop).

``s = alpha / r``. Targets use the names of ``lora.targets``: q_proj k_proj v_proj o_proj experts
shared drn lm_head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
SHARED = ("gate_proj", "up_proj", "down_proj")
EXPERTS = ("w_gate", "w_up", "w_down")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> torch.Tensor:  # the base weight (what the model reads when it is tied)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


class LoRADelta(nn.Module):
    """Parametrization W [E,I,O] -> W + s * A @ B."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float):
        super().__init__()
        e, i, o = weight.shape
        self.scale = scale
        self.A = nn.Parameter(torch.zeros(e, i, rank))
        self.B = nn.Parameter(torch.zeros(e, rank, o))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * torch.einsum("eir,ero->eio", self.A, self.B)


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> dict[str, nn.Module]:
    """Wrap the target matrices of a ``torch_ref.Transformer`` in place; freeze everything else.
    -> {JAX-style path "blocks/0/attn/wq" or "blocks/1/ffn/experts/w_gate": the LoRA module}."""
    scale = alpha / rank
    out: dict[str, nn.Module] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    jax_attn = dict(zip(ATTENTION, ("wq", "wk", "wv", "wo")))
    for i, block in enumerate(model.blocks):
        for name in ATTENTION:
            if name in targets and hasattr(block.attn, name):
                wrapped = LoRALinear(getattr(block.attn, name), rank, scale)
                setattr(block.attn, name, wrapped)
                out[f"blocks/{i}/attn/{jax_attn[name]}"] = wrapped
        ffn, moe = block.ffn, block.kind == "moe"
        if ("experts" in targets and moe) or ("drn" in targets and not moe):
            for w in EXPERTS:
                delta = LoRADelta(getattr(ffn.experts, w), rank, scale)
                parametrize.register_parametrization(ffn.experts, w, delta)
                out[f"blocks/{i}/ffn/experts/{w}"] = delta
        if "shared" in targets and moe and getattr(ffn, "shared", None) is not None:
            for name, w in zip(SHARED, EXPERTS):
                wrapped = LoRALinear(getattr(ffn.shared, name), rank, scale)
                setattr(ffn.shared, name, wrapped)
                out[f"blocks/{i}/ffn/shared/{w}"] = wrapped
    if "lm_head" in targets and not model.cfg.tie_embeddings:
        model.lm_head = LoRALinear(model.lm_head, rank, scale)
        out["lm_head"] = model.lm_head
    return out


def load_adapters(modules: dict[str, nn.Module], adapters: dict[str, tuple]) -> None:
    """Copy adapter values in: {path: (A [..,I,r], B [..,r,O])} in the JAX layout (numpy or torch)."""
    with torch.no_grad():
        for path, module in modules.items():
            a, b = (torch.as_tensor(x, dtype=torch.float32) for x in adapters[path])
            if isinstance(module, LoRALinear):
                module.lora_A.weight.copy_(a.T)
                module.lora_B.weight.copy_(b.T)
            else:
                module.A.copy_(a)
                module.B.copy_(b)


def adapter_grads(modules: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{path: (dA, dB)} in the JAX layout, after a backward pass."""
    out = {}
    for path, m in modules.items():
        if isinstance(m, LoRALinear):
            out[path] = (m.lora_A.weight.grad.T, m.lora_B.weight.grad.T)
        else:
            out[path] = (m.A.grad, m.B.grad)
    return out
