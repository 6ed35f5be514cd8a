"""The one map between JAX parameter paths and PyTorch ``state_dict`` keys (``torch_ref`` layout).

Used by the parity tests and by export, so a passing parity test means a working export.
JAX stores dense kernels as [in, out]; ``torch.nn.Linear`` stores [out, in]: those are transposed.
Stacked expert weights ([E,D,F] and [E,F,D]) and embeddings keep their layout. The audio adapter's
convolutions are [width, in, out] in JAX and [out, in, width] in ``torch.nn.Conv1d``: ``.T`` reverses
all three axes, so "transpose" covers them too.

    JAX path (nnx.to_pure_dict)           torch key                              transpose
    embed                                 embed.weight                           no
    blocks/i/attn_norm/scale              blocks.i.attn_norm.weight              no
    blocks/i/attn/w{q,k,v,o}              blocks.i.attn.{q,k,v,o}_proj.weight    yes
    blocks/i/ffn_norm/scale               blocks.i.ffn_norm.weight               no
    blocks/i/ffn/router                   blocks.i.ffn.router.weight             yes
    blocks/i/ffn/router_bias              blocks.i.ffn.router_bias (buffer)      no
    blocks/i/ffn/experts/w_{gate,up,down} blocks.i.ffn.experts.w_{gate,up,down}  no
    blocks/i/ffn/shared/w_{gate,up,down}  blocks.i.ffn.shared.{gate,up,down}_proj.weight  yes
    final_norm/scale                      final_norm.weight                      no
    lm_head                               lm_head.weight                         yes
    A = vision or audio (model/multimodal.py; present only when enabled):
    A/patch_embed, audio/conv{1,2}        A.patch_embed.weight, audio.conv{1,2}.weight  yes
    A/encoder/pos_embed                   A.encoder.pos_embed                    no
    A/encoder/blocks/i/...                as the decoder's blocks; mlp/w_* -> mlp.*_proj.weight  yes
    A/encoder/{proj_in,proj_out}          A.encoder.{proj_in,proj_out}.weight    yes
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LINEAR = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w_gate": "gate_proj",
    "w_up": "up_proj",
    "w_down": "down_proj",
}


def torch_key(path: tuple[str, ...]) -> tuple[str, bool]:
    """JAX path -> (torch key, transpose?). Raises KeyError for a path the map does not know."""
    p = [str(x) for x in path]
    last, parent = p[-1], p[-2] if len(p) > 1 else ""
    if p == ["embed"]:
        return "embed.weight", False
    if p == ["lm_head"]:
        return "lm_head.weight", True
    if last == "scale":
        return ".".join(p[:-1]) + ".weight", False
    if parent == "attn" and last in ("wq", "wk", "wv", "wo"):
        return ".".join(p[:-1] + [_LINEAR[last]]) + ".weight", True
    if parent in ("shared", "mlp"):  # mlp: the adapters' encoder blocks
        return ".".join(p[:-1] + [_LINEAR[last]]) + ".weight", True
    if parent == "experts" or last == "router_bias":
        return ".".join(p), False
    if last == "router":
        return ".".join(p) + ".weight", True
    if p[0] in ("vision", "audio"):  # the adapters' own matrices and convolutions
        return (".".join(p), False) if last == "pos_embed" else (".".join(p) + ".weight", True)
    raise KeyError(f"no torch name for JAX parameter {'/'.join(p)}")


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def to_torch_state(params: dict) -> dict[str, np.ndarray]:
    """Nested JAX pure dict -> {torch key: numpy array in torch layout}."""
    out = {}
    for path, value in flatten(params).items():
        key, transpose = torch_key(path)
        arr = np.asarray(value)
        out[key] = np.ascontiguousarray(arr.T) if transpose else arr
    return out


def from_torch_state(state: dict[str, Any], template: dict) -> dict:
    """{torch key: array} -> nested JAX pure dict shaped like ``template``.

    Missing keys, extra keys and shape mismatches raise one error listing the first offenders.
    """
    flat_t = flatten(template)
    out, problems, used = {}, [], set()
    for path, ref in flat_t.items():
        key, transpose = torch_key(path)
        if key not in state:
            problems.append(f"missing {key} (for {'/'.join(path)}, shape {tuple(np.shape(ref))})")
            continue
        arr = np.asarray(state[key])
        arr = arr.T if transpose else arr
        if arr.shape != tuple(np.shape(ref)):
            problems.append(f"{key}: shape {arr.shape} but the model expects {tuple(np.shape(ref))}")
        out[path] = arr
        used.add(key)
    extra = sorted(set(state) - used)
    problems += [f"unexpected {k}" for k in extra]
    if problems:
        raise ValueError("state does not match the model: " + "; ".join(problems[:8]))
    return unflatten(out)
