"""LoRA (Hu et al. 2021) with PEFT's conventions: W' = W + (alpha / r) * A @ B for the named matrices.

Legend: I input width, O output width of a matrix stored [I,O] (as every matrix here is), E experts,
r the adapter rank.

Adapters are a subtree of the params, ``params["lora"]``, mirroring the path of the matrix they adapt:
``params["lora"]["blocks"][0]["attn"]["wq"] = {"a": [I,r], "b": [r,O]}``; stacked experts [E,I,O] get
``{"a": [E,I,r], "b": [E,r,O]}`` (one adapter per expert). ``A ~ U(-1/sqrt(I), 1/sqrt(I))`` (PEFT's
kaiming-uniform with a = sqrt(5)) and ``B = 0``, so training starts exactly at the base model.

Every stage's loss runs on ``fold(params, scale)``: the base weights with each adapter folded in, so
the gradient reaches A and B through the product. Why folded rather than ``x W + s (x A) B``: the
model code stays LoRA-free, so one code path serves every matrix, expert dispatch (dense, dropless,
Triton, expert-parallel) and attention kind; folding costs r (I + O) I-by-O multiply-adds per matrix
per step, nothing beside a forward over a batch of tokens. PEFT does the same for stacked expert
weights (``lora.ParamWrapper``) and computes ``x W + s B(A x)`` for linear layers: equal in exact
arithmetic, and to float rounding here (``parity_tests/test_lora_parity.py``). What folding cannot
express is PEFT's ``lora_dropout``, which drops the adapter's input per token (PEFT's ParamWrapper
refuses it for the same reason), so ``lora.dropout`` must be 0.

Only ``params["lora"]`` is trainable (``mask``): frozen leaves get no gradient and no optimizer
moments (``training/optim.py``). ``merge`` folds and drops the adapters for good (export, eval).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from open_r1_jax.config import ConfigError, LoRAConfig, ModelConfig

KEY = "lora"  # the params subtree that holds the adapters
ATTENTION = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
EXPERT_MATRICES = ("w_gate", "w_up", "w_down")
TARGETS = (*ATTENTION, "experts", "shared", "drn", "lm_head")


def target_paths(model: ModelConfig, lora: LoRAConfig) -> list[tuple]:
    """Paths (as in the params tree) of the matrices ``lora.targets`` names, for this model.
    A target that names nothing in this model is a ConfigError."""
    paths: list[tuple] = []
    for target in lora.targets:
        found = _paths_of(model, target)
        if not found:
            raise ConfigError(f"lora.targets: {target!r} names no matrix of this model ({_why_none(model, target)})")
        paths += found
    return paths


def _paths_of(m: ModelConfig, target: str) -> list[tuple]:
    lsh = lambda i: m.attention.kind == "lsh" or i in m.attention.lsh_layers
    if target in ATTENTION:
        skip = target == "k_proj" and m.attention.shared_qk  # shared-QK LSH layers have no key projection
        return [("blocks", i, "attn", ATTENTION[target]) for i in range(m.n_layers) if not (skip and lsh(i))]
    if target in ("experts", "drn"):
        layers = range(m.drn_layers, m.n_layers) if target == "experts" else range(m.drn_layers)
        return [("blocks", i, "ffn", "experts", w) for i in layers for w in EXPERT_MATRICES]
    if target == "shared":
        layers = range(m.drn_layers, m.n_layers) if m.moe.n_shared_experts else ()
        return [("blocks", i, "ffn", "shared", w) for i in layers for w in EXPERT_MATRICES]
    if target == "lm_head":
        return [] if m.tie_embeddings else [("lm_head",)]
    raise ConfigError(f"lora.targets: unknown {target!r}; accepted: {', '.join(TARGETS)}")


def _why_none(m: ModelConfig, target: str) -> str:
    return {
        "experts": "model.drn_layers == model.n_layers: no MoE layer",
        "drn": "model.drn_layers is 0",
        "shared": "model.moe.n_shared_experts is 0",
        "lm_head": "model.tie_embeddings is true: the head is the embedding",
        "k_proj": "every layer is a shared-QK LSH layer",
    }.get(target, "")


def _get(tree: dict, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _walk(adapters: dict, prefix: tuple = ()):
    """(path, {"a", "b"}) for every adapter of a ``params["lora"]`` tree."""
    if set(adapters) == {"a", "b"} and not isinstance(adapters["a"], dict):
        yield prefix, adapters
        return
    for k, v in adapters.items():
        yield from _walk(v, prefix + (k,))


def init(params: dict, paths: list[tuple], rank: int, key: jax.Array) -> dict:
    """The adapters of ``paths`` (``params["lora"]``): A uniform in +-1/sqrt(I), B zero."""
    adapters: dict = {}
    for j, path in enumerate(paths):
        w = _get(params, path)
        *lead, i, o = w.shape
        bound = 1.0 / i**0.5
        a = jax.random.uniform(jax.random.fold_in(key, j), (*lead, i, rank), jnp.float32, -bound, bound)
        _set(adapters, path, {"a": a, "b": jnp.zeros((*lead, rank, o), jnp.float32)})
    return adapters


def axes(param_axes: dict, paths: list[tuple]) -> dict:
    """Logical axis names of the adapters: A keeps its matrix's input axis, B its output axis."""
    out: dict = {}
    for path in paths:
        *lead, ax_in, ax_out = _get(param_axes, path) or (None,) * 2
        _set(out, path, {"a": (*lead, ax_in, None), "b": (*lead, None, ax_out)})
    return out


def delta(adapter: dict, scale: float) -> jax.Array:
    """scale * A @ B: [...,I,r] x [...,r,O] -> [...,I,O] (batched over experts)."""
    return scale * jnp.einsum("...ir,...ro->...io", adapter["a"], adapter["b"])


def fold(params: dict, scale: float) -> dict:
    """The model's params (no ``lora`` key) with every adapter folded into its matrix; params without
    adapters pass through unchanged. Differentiable: the stages' losses run on this."""
    if KEY not in params:
        return params
    out = {k: v for k, v in params.items() if k != KEY}
    for path, adapter in _walk(params[KEY]):
        node = out
        for k in path[:-1]:  # copy the dicts along the path, never the untouched leaves
            node[k] = dict(node[k])
            node = node[k]
        node[path[-1]] = node[path[-1]] + delta(adapter, scale).astype(node[path[-1]].dtype)
    return out


def mask(params: dict) -> dict:
    """Trainable mask: True for the adapters, False for every base weight."""
    return {k: jax.tree.map(lambda _: k == KEY, v) for k, v in params.items()}


def scale(cfg: LoRAConfig) -> float:
    return cfg.alpha / cfg.rank


def merge(params: dict, config: dict) -> dict:
    """Fold the adapters of a checkpoint's params with the ``lora`` section of its resolved config."""
    if KEY not in params:
        return params
    lora = config.get("lora") or {}
    return fold(params, float(lora["alpha"]) / int(lora["rank"]))


def count(params: dict) -> int:
    """Adapter parameters in a params tree."""
    return sum(x.size for x in jax.tree.leaves(params.get(KEY, {})))
