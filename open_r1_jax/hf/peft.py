"""LoRA adapters in PEFT's layout, for the modules of this project's transformers export.

``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_export, trust_remote_code=True),
adapter_dir)`` loads what ``write_adapter`` writes: ``adapter_config.json`` and
``adapter_model.safetensors`` (tested against peft itself in ``parity_tests/test_lora_parity.py``).

Names and layouts (JAX adapters of ``model/lora.py``: A [..,I,r], B [..,r,O]; ``s = alpha / r`` in both):

- linear layers (``nn.Linear`` in the export: attention ``blocks.i.attn.{q,k,v,o}_proj``, shared experts
  ``blocks.i.ffn.shared.{gate,up,down}_proj``, ``lm_head``) are PEFT ``target_modules``:
  ``<module>.lora_A.weight`` = A^T [r,I], ``<module>.lora_B.weight`` = B^T [O,r];
- stacked experts (``nn.Parameter`` [E,I,O] ``blocks.i.ffn.experts.w_{gate,up,down}``) are PEFT
  ``target_parameters`` (``lora.ParamWrapper``, peft >= 0.17), whose delta is
  ``delta[e,i,o] = s * sum_r lora_B[i, r*E + e] * lora_A[e*r + r', o]``: so ``lora_A.weight`` =
  B reshaped [E*r, O] and ``lora_B.weight`` = A moved to [I, r, E] and reshaped [I, r*E]. PEFT wraps
  the parameters of one module one inside the other in definition order (w_gate innermost), so the
  outer ones' tensors are named ``experts.lora_A``, the inner ``experts.base_layer.lora_A``, ...
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from open_r1_jax.model.lora import EXPERT_MATRICES, _walk

PREFIX = "base_model.model."
_LINEAR = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}
_SHARED = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}


def _module(path: tuple) -> tuple[str, str | None]:
    """JAX adapter path -> (export module name, parameter name for a stacked-expert target, else None)."""
    p = [str(x) for x in path]
    if p == ["lm_head"]:
        return "lm_head", None
    if p[2] == "attn":
        return f"blocks.{p[1]}.attn.{_LINEAR[p[3]]}", None
    if p[3] == "shared":
        return f"blocks.{p[1]}.ffn.shared.{_SHARED[p[4]]}", None
    return f"blocks.{p[1]}.ffn.experts", p[4]


def adapter_tensors(adapters: dict) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """``params["lora"]`` -> (tensors by PEFT name, target_modules, target_parameters)."""
    tensors, modules, parameters = {}, [], []
    wrapped: dict[str, list[str]] = {}  # experts module -> its targeted parameters
    for path, _ in _walk(adapters):
        module, param = _module(path)
        if param is not None:
            wrapped.setdefault(module, []).append(param)
    for path, ad in _walk(adapters):
        a, b = np.asarray(ad["a"], np.float32), np.asarray(ad["b"], np.float32)
        module, param = _module(path)
        if param is None:
            modules.append(module)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T)
            continue
        parameters.append(f"{module}.{param}")
        order = [w for w in EXPERT_MATRICES if w in wrapped[module]]  # innermost first
        depth = len(order) - 1 - order.index(param)
        name = f"{PREFIX}{module}{'.base_layer' * depth}"
        e, i, r = a.shape
        tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(b.reshape(e * r, b.shape[-1]))
        tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(a.transpose(1, 2, 0).reshape(i, r * e))
    return tensors, modules, parameters


def write_adapter(adapters: dict, rank: int, alpha: float, out: Path, base: str = "") -> list[str]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``out`` (which exists)."""
    from safetensors.numpy import save_file

    tensors, modules, parameters = adapter_tensors(adapters)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": modules or None,
        "target_parameters": parameters or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return ["adapter_config.json", "adapter_model.safetensors"]
