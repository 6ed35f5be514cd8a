"""JAX model versus torch_ref on the same random weights and tokens; dropless versus dense dispatch.

Errors are relative: max |a - ref| / max |ref| per tensor (ref = torch_ref, or the dense dispatch).
A reference that is exactly zero must be matched exactly. ``pytest -s`` prints the errors observed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_ref
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.model import build_model
from open_r1_jax.model import routing as jax_routing
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training import losses as jax_losses
from torch_ref import losses as torch_losses

B, T = 2, 12
LOGIT_TOL, LOSS_TOL, AUX_TOL, GRAD_TOL = 1e-5, 1e-5, 1e-5, 1e-4

BASE = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.dtype=float32",
    "model.kernels=xla",
    "model.init_std=0.1",  # larger than the default 0.02: blocks matter more
    "model.drn.n_experts=4",
    "model.drn.expert_ffn_dim=16",
    "model.moe.n_experts=8",
    "model.moe.expert_ffn_dim=16",
    "model.moe.dispatch=dense",
]

CASES = {
    "drn_only": ["model.drn_layers=3"],
    # configs/baby_gpt.yaml's kind: multi-head attention (its own path) and one DRN expert (a SwiGLU)
    "dense_gpt_mha": ["model.drn_layers=3", "model.n_kv_heads=4", "model.drn.n_experts=1"],
    "moe_softmax_top2": ["model.moe.router=softmax", "model.moe.top_k=2", "model.moe.renormalize=true"],
    "moe_sigmoid_bias_shared": [
        "model.moe.router=sigmoid",
        "model.moe.top_k=2",
        "model.moe.n_shared_experts=1",
        "model.moe.route_scale=2.5",
        "model.moe.seq_balance_coef=0.01",
    ],
    "packed_segments": [
        "model.moe.router=sigmoid",
        "model.moe.top_k=2",
        "model.moe.n_shared_experts=1",
        "model.moe.route_scale=2.5",
        "model.moe.seq_balance_coef=0.01",
    ],
    "tied_softmax_top3_no_renorm": [
        "model.tie_embeddings=true",
        "model.attention.rope_theta=500",
        "model.moe.router=softmax",
        "model.moe.top_k=3",
        "model.moe.renormalize=false",
        "model.moe.seq_balance_coef=0.02",
    ],
}

# three documents and padding in row 0, two documents and padding in row 1 (segment 0 = padding)
PACKED_SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]], np.int32)


def rel_err(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    diff = float(np.max(np.abs(a - ref))) if a.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def packed_positions(segments: np.ndarray) -> np.ndarray:
    """Positions restart at 0 at every segment boundary (padding counts as its own segment)."""
    pos = np.zeros_like(segments)
    for b in range(segments.shape[0]):
        for t in range(1, segments.shape[1]):
            pos[b, t] = pos[b, t - 1] + 1 if segments[b, t] == segments[b, t - 1] else 0
    return pos


def make_inputs(case: str, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, T), dtype=np.int32)
    targets = rng.integers(0, vocab, (B, T), dtype=np.int32)
    if case == "packed_segments":
        segments = PACKED_SEGMENTS
        return tokens, targets, packed_positions(segments), segments, (segments > 0)
    return tokens, targets, None, None, np.ones((B, T), bool)


def jax_model(overrides: list[str], seed: int = 0, bias_std: float = 0.1, bias: dict | None = None):
    """Random JAX model; a sigmoid router gets a non-zero random bias (or ``bias`` {expert: value})."""
    cfg = load_config(None, overrides)
    model = build_model(cfg.model, seed)
    rng = np.random.default_rng(seed + 1)
    for blk in model.blocks:
        if hasattr(blk.ffn, "router_bias"):
            e = cfg.model.moe.n_experts
            b = (bias_std * rng.standard_normal(e)).astype(np.float32)
            for expert, value in (bias or {}).items():
                b[expert] = value
            blk.ffn.router_bias[...] = jnp.asarray(b)
    return cfg, model


def jax_loss_and_grads(model, tokens, targets, positions, segments, mask):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    args = [None if a is None else jnp.asarray(a) for a in (tokens, targets, positions, segments, mask)]

    @jax.jit
    def run(params, tokens, targets, positions, segments, mask):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest)
            logits, aux = m(tokens, positions, segments)
            nll, n = jax_losses.summed_nll(logits, targets, mask)
            return nll / n + aux["aux_loss"], (logits, aux)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, (logits, aux)), grads = run(params, *args)
    grads = {k: np.asarray(v) for k, v in to_torch_state(nnx.to_pure_dict(grads)).items()}
    return float(loss), np.asarray(logits), jax.tree.map(np.asarray, aux), grads


def torch_model_from_jax(cfg, model) -> torch_ref.Transformer:
    tmodel = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg)))
    state = to_torch_state(nnx.to_pure_dict(nnx.state(model)))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return tmodel


def torch_loss_and_grads(tmodel, tokens, targets, positions, segments, mask):
    tt = lambda a: None if a is None else torch.from_numpy(np.asarray(a)).long()
    tmodel.zero_grad(set_to_none=True)
    logits, aux = tmodel(tt(tokens), tt(positions), tt(segments))
    nll, n = torch_losses.summed_nll(logits, tt(targets), torch.from_numpy(np.asarray(mask)))
    loss = nll / n + aux["aux_loss"]
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in tmodel.named_parameters() if p.grad is not None}
    return float(loss.detach()), logits.detach().numpy(), {k: v.detach().numpy() for k, v in aux.items()}, grads


@pytest.mark.parametrize("case", list(CASES))
def test_jax_matches_torch_ref(case):
    cfg, model = jax_model(BASE + CASES[case])
    tmodel = torch_model_from_jax(cfg, model)
    inputs = make_inputs(case, cfg.model.vocab_size)

    j_loss, j_logits, j_aux, j_grads = jax_loss_and_grads(model, *inputs)
    t_loss, t_logits, t_aux, t_grads = torch_loss_and_grads(tmodel, *inputs)

    errs = {"logits": rel_err(j_logits, t_logits), "loss": rel_err(j_loss, t_loss)}
    assert set(j_aux) == set(t_aux), (sorted(j_aux), sorted(t_aux))
    for key in ("balance_loss", "seq_balance_loss", "z_loss", "aux_loss"):
        if key in t_aux:
            errs[key] = rel_err(j_aux[key], t_aux[key])
    # every trainable parameter has a gradient on both sides, under the same name
    trainable = {k for k, p in tmodel.named_parameters()}
    assert set(t_grads) == trainable, sorted(trainable - set(t_grads))
    assert set(j_grads) == trainable, sorted(set(j_grads) ^ trainable)
    grad_errs = {k: rel_err(j_grads[k], t_grads[k]) for k in sorted(trainable)}
    worst = max(grad_errs, key=grad_errs.get)
    print(
        f"\n[{case}] loss {t_loss:.6f}; "
        + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
        + f"; max grad err {grad_errs[worst]:.2e} ({worst})"
    )

    assert errs["logits"] <= LOGIT_TOL, errs
    assert errs["loss"] <= LOSS_TOL, errs
    for key in ("balance_loss", "seq_balance_loss", "z_loss", "aux_loss"):
        if key in errs:
            assert errs[key] <= AUX_TOL, (key, errs)
    bad = {k: v for k, v in grad_errs.items() if not v <= GRAD_TOL}
    assert not bad, bad

    if cfg.model.drn_layers < cfg.model.n_layers:
        np.testing.assert_array_equal(j_aux["expert_ids"], t_aux["expert_ids"])
        np.testing.assert_array_equal(j_aux["expert_counts"], t_aux["expert_counts"])
        n_moe = cfg.model.n_layers - cfg.model.drn_layers
        assert t_aux["expert_ids"].shape == (n_moe, B, T, cfg.model.moe.top_k)
        assert t_aux["expert_counts"].shape == (n_moe, cfg.model.moe.n_experts)
        mask = inputs[-1]
        assert np.all(t_aux["expert_counts"].sum(-1) == mask.sum() * cfg.model.moe.top_k)
        assert t_aux["aux_loss"] > 0
    else:
        assert set(t_aux) == {"aux_loss"} and float(t_aux["aux_loss"]) == 0.0

    if cfg.model.moe.router == "sigmoid" and cfg.model.drn_layers < cfg.model.n_layers:
        # the bias must actually change the selection, or this case would not test it
        for blk in tmodel.blocks:
            if blk.kind == "moe":
                assert torch.any(blk.ffn.router_bias != 0)
                blk.ffn.router_bias.zero_()
        with torch.no_grad():
            tt = lambda a: None if a is None else torch.from_numpy(np.asarray(a)).long()
            _, unbiased = tmodel(tt(inputs[0]), tt(inputs[2]), tt(inputs[3]))
        changed = (unbiased["expert_ids"].numpy() != t_aux["expert_ids"]).any(-1).mean()
        print(f"[{case}] share of (layer, token) selections changed by the router bias: {changed:.2f}")
        assert changed > 0


# ----------------------------------------------------------------------------- dropless == dense (JAX)

DROPLESS_CASES = {
    # softmax top-2: group sizes are generally not multiples of the block size 4
    "softmax_top2": (["model.moe.router=softmax", "model.moe.top_k=2"], None),
    # sigmoid: experts 0, 3 and 7 (first, middle, last) never win the top-k -> empty groups
    "sigmoid_empty_experts": (
        ["model.moe.router=sigmoid", "model.moe.top_k=2", "model.moe.n_shared_experts=1", "model.moe.route_scale=2.5"],
        {0: -1e4, 3: -1e4, 7: -1e4},
    ),
}
# two MoE layers, nothing else to compile; 24 tokens x 8 experts would otherwise run the dense path
DROPLESS_LAYERS = ["model.n_layers=2", "model.drn_layers=0", "model.moe.dense_token_experts=0"]
DROPLESS_IMPLS = [["model.moe.grouped_impl=blocked", "model.moe.block_size=4"], ["model.moe.grouped_impl=ragged_dot"]]


@pytest.mark.parametrize("case", list(DROPLESS_CASES))
def test_dropless_matches_dense(case):
    extra, bias = DROPLESS_CASES[case]
    inputs = make_inputs(case, 64, seed=3)
    _, dense = jax_model(BASE + DROPLESS_LAYERS + extra, seed=2, bias=bias)
    d_loss, d_logits, d_aux, d_grads = jax_loss_and_grads(dense, *inputs)
    counts = d_aux["expert_counts"]  # [L,E]; no padding here, so these are the group sizes
    assert np.any(counts % 4 != 0), counts
    if bias:
        assert np.all(counts[:, list(bias)] == 0), counts
    for impl in DROPLESS_IMPLS:
        overrides = (
            [o for o in BASE if not o.startswith("model.moe.dispatch")]
            + DROPLESS_LAYERS
            + extra
            + ["model.moe.dispatch=dropless"]
            + impl
        )
        # same parameters (and router bias) as the dense model, only the dispatch differs
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(load_config(None, overrides).model, 2)))
        dropless = nnx.merge(graphdef, nnx.state(dense))
        assert all(blk.ffn.cfg.dispatch == "dropless" for blk in dropless.blocks)
        loss, logits, aux, grads = jax_loss_and_grads(dropless, *inputs)
        np.testing.assert_array_equal(aux["expert_ids"], d_aux["expert_ids"])
        errs = {"logits": rel_err(logits, d_logits), "loss": rel_err(loss, d_loss)}
        grad_errs = {k: rel_err(grads[k], d_grads[k]) for k in d_grads}
        assert set(grads) == set(d_grads)
        worst = max(grad_errs, key=grad_errs.get)
        print(
            f"\n[dropless {case} {impl[0].split('=')[1]}] logits {errs['logits']:.2e}, loss {errs['loss']:.2e}, "
            f"max grad err {grad_errs[worst]:.2e} ({worst})"
        )
        assert errs["logits"] <= LOGIT_TOL and errs["loss"] <= LOSS_TOL, errs
        bad = {k: v for k, v in grad_errs.items() if not v <= GRAD_TOL}
        assert not bad, bad
        if bias:  # experts that receive no token get exactly zero gradient in both dispatches
            for layer in (0, 1):
                for e in bias:
                    for w in ("w_gate", "w_up", "w_down"):
                        assert not np.any(grads[f"blocks.{layer}.ffn.experts.{w}"][e])


# ----------------------------------------------------------------------------- losses, bias update


def test_losses_and_bias_update_match_jax():
    rng = np.random.default_rng(7)
    logits = (3 * rng.standard_normal((B, T, 64))).astype(np.float32)
    targets = rng.integers(0, 64, (B, T)).astype(np.int32)
    mask = PACKED_SEGMENTS > 0
    j_sum, j_n = jax_losses.summed_nll(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    t_sum, t_n = torch_losses.summed_nll(
        torch.from_numpy(logits), torch.from_numpy(targets).long(), torch.from_numpy(mask)
    )
    err = rel_err(float(t_sum), float(j_sum))
    print(f"\n[summed_nll] rel err {err:.2e}")
    assert err <= LOSS_TOL and float(t_n) == float(j_n) == mask.sum()

    bias = rng.standard_normal((2, 8)).astype(np.float32)
    counts = rng.integers(0, 10, (2, 8)).astype(np.float32)
    j_new = jax_routing.bias_update(jnp.asarray(bias), jnp.asarray(counts), 0.001)
    t_new = torch_losses.bias_update(torch.from_numpy(bias), torch.from_numpy(counts), 0.001)
    np.testing.assert_array_equal(np.asarray(j_new), t_new.numpy())


def test_torch_ref_imports_neither_jax_nor_flax():
    code = "import sys, torch_ref; bad = [m for m in ('jax', 'flax') if m in sys.modules]; assert not bad, bad"
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)


# ----------------------------------------------------------------------------- load_pretrained


def _export(tmp_path, cfg, model, shards: int, whole_config: bool = True):
    from safetensors.torch import save_file

    state = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state(nnx.to_pure_dict(nnx.state(model))).items()}
    model_section = to_dict(cfg)["model"]
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg) if whole_config else model_section))
    if shards == 1:
        save_file(state, str(tmp_path / "model.safetensors"))
        return state
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, str(tmp_path / name))
        weight_map.update({k: name for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


@pytest.mark.parametrize("shards,whole_config", [(1, True), (3, False)])
def test_load_pretrained(tmp_path, shards, whole_config):
    cfg, model = jax_model(BASE + CASES["moe_sigmoid_bias_shared"])
    state = _export(tmp_path, cfg, model, shards, whole_config)
    loaded = torch_ref.load_pretrained(tmp_path)
    assert not loaded.training
    got = loaded.state_dict()
    assert set(got) == set(state)
    for k in state:
        assert torch.equal(got[k], state[k]), k
    tokens = torch.from_numpy(make_inputs("moe_sigmoid_bias_shared", 64)[0]).long()
    with torch.no_grad():
        got_logits = loaded(tokens)  # a loaded model returns logits only
        ref_logits, _ = torch_model_from_jax(cfg, model)(tokens)
        loaded.return_aux = True
        _, got_aux = loaded(tokens)
    assert torch.equal(got_logits, ref_logits) and got_aux["expert_ids"].shape[0] == 2


def test_load_pretrained_names_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    cfg, model = jax_model(BASE + CASES["moe_sigmoid_bias_shared"])
    state = _export(tmp_path, cfg, model, 1)
    del state["blocks.1.ffn.router_bias"]
    state["blocks.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as info:
        torch_ref.load_pretrained(tmp_path)
    msg = str(info.value)
    assert "model.safetensors" in msg and "blocks.1.ffn.router_bias" in msg and "blocks.9.extra.weight" in msg
