"""Read a model folder (``config.json`` + safetensors) of any supported kind into a model section and
tensors with ``torch_ref`` names (which ``export.from_torch_tensors`` turns into JAX weights).

    model_type         architecture in this project                      tensors
    open_r1_sandwich   as exported (``python -m open_r1_jax.export``)    torch_ref names already
    (none)             an export of wave 1, or torch_ref written by PyTorch ("model" section or a bare one)
    llama              every block a one-expert DRN block (softmax over one expert is exactly 1)
    mixtral            every block a sparse softmax top-k MoE block (renormalised, as Mixtral)

Llama / Mixtral names and layouts (torch.nn.Linear stores [out, in]):

    model.embed_tokens.weight                         embed.weight
    model.layers.i.input_layernorm.weight             blocks.i.attn_norm.weight
    model.layers.i.self_attn.{q,k,v,o}_proj.weight    blocks.i.attn.{q,k,v,o}_proj.weight
    model.layers.i.post_attention_layernorm.weight    blocks.i.ffn_norm.weight
    llama:   model.layers.i.mlp.{gate,up,down}_proj.weight   blocks.i.ffn.experts.w_{gate,up,down}[0] (transposed)
             (no router in the file)                          blocks.i.ffn.router.weight = zeros [1, D]
    mixtral: model.layers.i.block_sparse_moe.gate.weight      blocks.i.ffn.router.weight
             ....block_sparse_moe.experts.e.w{1,3,2}.weight   blocks.i.ffn.experts.w_{gate,up,down}[e] (transposed)
    model.norm.weight                                 final_norm.weight
    lm_head.weight (absent when tied)                 lm_head.weight

An option the model cannot represent exactly is refused with an error naming the key: nothing is
ever loaded approximately.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from open_r1_jax.hf.files import MODEL_TYPE, model_section

SUPPORTED = (MODEL_TYPE, "llama", "mixtral")
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed, never learned


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a model folder holds config.json next to its safetensors)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def read_model_dir(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Model folder -> (model section, {torch_ref key: array}). Reads and checks everything before
    returning; raises FileNotFoundError / ValueError naming the file and the key."""
    from open_r1_jax.export import read_safetensors

    directory = Path(directory)
    raw = read_config(directory)
    kind = raw.get("model_type")
    if kind is None:  # wave-1 export or torch_ref saved by PyTorch: a config with a "model" section, or one
        section = raw["model"] if isinstance(raw.get("model"), dict) else raw
        return section, read_safetensors(directory)
    if kind not in SUPPORTED:
        raise ValueError(
            f"{directory / 'config.json'}: model_type {kind!r} is not supported; accepted: {list(SUPPORTED)}"
        )
    if kind == MODEL_TYPE:
        return model_section(raw), read_safetensors(directory)
    section = _section(raw, kind, directory / "config.json")
    return section, _tensors(read_safetensors(directory), section, kind, directory)


# ----------------------------------------------------------------------------- config


def _refuse(where: Path, key: str, value, why: str) -> ValueError:
    return ValueError(f"{where}: {key} = {value!r}: {why}; refused rather than loaded approximately")


def _rope(raw: dict, where: Path) -> tuple[float, str, float]:
    """(theta, scaling, factor) from transformers 5 ``rope_parameters`` or the older rope_theta / rope_scaling."""
    params = raw.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind == "default":
        return theta, "none", 1.0
    if kind == "linear":
        return theta, "linear", float(scaling["factor"])
    raise _refuse(where, "rope type", kind, "the model has rotary scaling 'default' and 'linear' only")


def _section(raw: dict, kind: str, where: Path) -> dict:
    """Llama / Mixtral config.json -> the model section of this project."""
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(raw.get(key), int):
            raise ValueError(f"{where}: {key} missing or not an integer (got {raw.get(key)!r})")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise _refuse(where, key, raw[key], "the model has no biases")
    if raw.get("hidden_act", "silu") != "silu":
        raise _refuse(where, "hidden_act", raw["hidden_act"], "the experts are SwiGLU (silu) networks")
    window = raw.get("sliding_window")
    if window is not None and raw.get("use_sliding_window", True) and window < raw.get("max_position_embeddings", 0):
        raise _refuse(where, "sliding_window", window, "the model attends to the whole context")
    theta, scaling, factor = _rope(raw, where)
    heads = raw["num_attention_heads"]
    d, f = raw["hidden_size"], raw["intermediate_size"]
    section = {
        "vocab_size": raw["vocab_size"],
        "d_model": d,
        "n_layers": raw["num_hidden_layers"],
        "n_heads": heads,
        "n_kv_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or d // heads,
        "max_seq_len": raw.get("max_position_embeddings", 2048),
        "norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "init_std": float(raw.get("initializer_range", 0.02)),
        "attention": {"kind": "full", "rope_theta": theta, "rope_scaling": scaling, "rope_factor": factor},
    }
    if kind == "llama":
        return {**section, "drn_layers": section["n_layers"], "drn": {"n_experts": 1, "expert_ffn_dim": f}}
    experts, top_k = raw.get("num_local_experts"), raw.get("num_experts_per_tok")
    if not isinstance(experts, int) or not isinstance(top_k, int):
        raise ValueError(f"{where}: num_local_experts / num_experts_per_tok missing (got {experts!r}, {top_k!r})")
    moe = {
        "n_experts": experts,
        "top_k": top_k,
        "expert_ffn_dim": f,
        "router": "softmax",
        "renormalize": True,  # Mixtral divides the kept top-k weights by their sum
        "balance_coef": float(raw.get("router_aux_loss_coef", 0.001)),
        "z_loss_coef": 0.0,  # Mixtral trains without a router z-loss
    }
    return {**section, "drn_layers": 0, "moe": moe}


# ----------------------------------------------------------------------------- weights


def _expected(section: dict, kind: str) -> dict[str, tuple[int, ...]]:
    """Every key a Llama / Mixtral file of this config must hold, with its shape."""
    d, v, h, g, k = (section[x] for x in ("d_model", "vocab_size", "n_heads", "n_kv_heads", "head_dim"))
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not section["tie_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(section["n_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)})
        shapes.update({p + "self_attn.q_proj.weight": (h * k, d), p + "self_attn.o_proj.weight": (d, h * k)})
        shapes.update({p + "self_attn.k_proj.weight": (g * k, d), p + "self_attn.v_proj.weight": (g * k, d)})
        if kind == "llama":
            f = section["drn"]["expert_ffn_dim"]
            shapes.update({p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d)})
            shapes[p + "mlp.down_proj.weight"] = (d, f)
        else:
            m = section["moe"]
            f, q = m["expert_ffn_dim"], p + "block_sparse_moe."
            shapes[q + "gate.weight"] = (m["n_experts"], d)
            for e in range(m["n_experts"]):
                shapes.update({f"{q}experts.{e}.w1.weight": (f, d), f"{q}experts.{e}.w3.weight": (f, d)})
                shapes[f"{q}experts.{e}.w2.weight"] = (d, f)
    return shapes


def _tensors(tensors: dict[str, np.ndarray], section: dict, kind: str, where: Path) -> dict[str, np.ndarray]:
    """Llama / Mixtral tensors -> torch_ref names, after checking every key and shape against the config."""
    shapes = _expected(section, kind)
    problems = [f"missing {k} {s}" for k, s in shapes.items() if k not in tensors]
    problems += [
        f"unexpected {k}" for k in sorted(tensors) if k not in shapes and not any(k.endswith(x) for x in _IGNORED)
    ]
    problems += [
        f"{k}: shape {tuple(tensors[k].shape)}, config.json implies {s}"
        for k, s in shapes.items()
        if k in tensors and tuple(tensors[k].shape) != s
    ]
    if problems:
        raise ValueError(f"{where}: the safetensors do not match config.json ({kind}): " + "; ".join(problems[:8]))
    out = {"embed.weight": tensors["model.embed_tokens.weight"], "final_norm.weight": tensors["model.norm.weight"]}
    if not section["tie_embeddings"]:
        out["lm_head.weight"] = tensors["lm_head.weight"]
    for i in range(section["n_layers"]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out[b + "attn_norm.weight"] = tensors[p + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = tensors[p + "post_attention_layernorm.weight"]
        for x in "qkvo":
            out[f"{b}attn.{x}_proj.weight"] = tensors[f"{p}self_attn.{x}_proj.weight"]
        if kind == "llama":  # one expert: [F,D] -> [1,D,F]; the router's one logit gets softmax weight 1
            gate, up, down = (tensors[f"{p}mlp.{x}_proj.weight"][None] for x in ("gate", "up", "down"))
            router = np.zeros((1, section["d_model"]), gate.dtype)
        else:
            q, n = p + "block_sparse_moe.", section["moe"]["n_experts"]
            stack = lambda w: np.stack([tensors[f"{q}experts.{e}.{w}.weight"] for e in range(n)])  # noqa: B023
            gate, up, down = stack("w1"), stack("w3"), stack("w2")
            router = tensors[q + "gate.weight"]
        out[b + "ffn.router.weight"] = router
        out[b + "ffn.experts.w_gate"] = np.ascontiguousarray(np.swapaxes(gate, 1, 2))  # [E,D,F]
        out[b + "ffn.experts.w_up"] = np.ascontiguousarray(np.swapaxes(up, 1, 2))
        out[b + "ffn.experts.w_down"] = np.ascontiguousarray(np.swapaxes(down, 1, 2))  # [E,F,D]
    return out
