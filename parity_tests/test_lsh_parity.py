"""LSH attention and rotary scaling: JAX versus torch_ref in fp32, the same rotations on both sides.

The JAX model draws layer i's rotations from ``fold_in(rng, i)``; torch_ref takes them as tensors
(``rotations={i: ...}``), built here with ``lsh_rotations`` from the same keys. Errors are relative
(max |a - ref| / max |ref|, ref = torch_ref); ``pytest -s`` prints them. Tolerance 1e-5 for the
forward and the gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_model_parity import BASE, PACKED_SEGMENTS, make_inputs, rel_err, torch_model_from_jax

import torch_ref
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.model import build_model
from open_r1_jax.model.layers import rotary
from open_r1_jax.model.lsh_attention import lsh_attention, lsh_rotations
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training import losses as jax_losses
from torch_ref import losses as torch_losses
from torch_ref.layers import rotary as torch_rotary
from torch_ref.lsh_attention import lsh_attention as torch_lsh_attention

TOL = 1e-5
B, T, H, G, K = 2, 12, 4, 2, 8

ATTENTION_CASES = {  # n_hashes, n_buckets, chunk_size, shared_qk
    "separate_qk_3_rounds_ragged_chunks": (3, 4, 5, False),  # T=12 is padded to 15
    "shared_qk_2_rounds": (2, 6, 4, True),
    "one_bucket_one_chunk": (2, 1, 12, False),
}

MODEL_CASES = {
    "lsh_every_layer_shared_qk": [
        "model.attention.kind=lsh",
        "model.attention.shared_qk=true",
        "model.attention.n_hashes=2",
        "model.attention.n_buckets=4",
        "model.attention.chunk_size=4",
    ],
    "mixed_layers_ntk_rope": [
        "model.attention.lsh_layers=[0,2]",
        "model.attention.n_hashes=3",
        "model.attention.n_buckets=6",
        "model.attention.chunk_size=3",
        "model.attention.rope_scaling=ntk",
        "model.attention.rope_factor=4",
    ],
    "lsh_linear_rope_sigmoid_moe": [
        "model.attention.lsh_layers=[1]",
        "model.attention.n_buckets=2",
        "model.attention.chunk_size=6",
        "model.attention.rope_scaling=linear",
        "model.attention.rope_factor=2",
        "model.moe.router=sigmoid",
    ],
}


def _t(a):
    return torch.from_numpy(np.array(a))


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_lsh_attention_matches_torch(case):
    n_hashes, n_buckets, chunk, shared = ATTENTION_CASES[case]
    kq, kk, kv, kr, kc = jax.random.split(jax.random.key(0), 5)
    q, k, v = (
        jax.random.normal(kq, (B, T, H, K)),
        jax.random.normal(kk, (B, T, G, K)),
        jax.random.normal(kv, (B, T, G, K)),
    )
    cot = jax.random.normal(kc, (B, T, H, K))  # a random cotangent: grads of sum(out * cot)
    rot = lsh_rotations(kr, K, n_hashes, n_buckets)
    seg = jnp.asarray(PACKED_SEGMENTS)

    def f(q, k, v):
        out = lsh_attention(q, None if shared else k, v, seg, rot, n_buckets, chunk, shared)
        return jnp.sum(out * cot), out

    (_, j_out), j_grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    tq, tk, tv = (_t(x).requires_grad_() for x in (q, k, v))
    t_out = torch_lsh_attention(tq, None if shared else tk, tv, _t(seg).long(), _t(rot), n_buckets, chunk, shared)
    (t_out * _t(cot)).sum().backward()
    errs = {
        "out": rel_err(j_out, t_out.detach().numpy()),
        "dq": rel_err(j_grads[0], tq.grad.numpy()),
        "dv": rel_err(j_grads[2], tv.grad.numpy()),
    }
    if not shared:
        errs["dk"] = rel_err(j_grads[1], tk.grad.numpy())
    print(f"\n[lsh attention {case}] " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
    assert all(e <= TOL for e in errs.values()), errs


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_lsh_model_matches_torch_ref(case):
    cfg = load_config(None, BASE + MODEL_CASES[case] + [f"train.seq_len={T}"])
    model = build_model(cfg.model, 0)
    tmodel = torch_model_from_jax(cfg, model)
    tokens, targets, positions, segments, mask = make_inputs("packed_segments", cfg.model.vocab_size)
    rng = jax.random.key(11)
    a = cfg.model.attention
    lsh = [i for i in range(cfg.model.n_layers) if a.kind == "lsh" or i in a.lsh_layers]
    rotations = {
        i: _t(lsh_rotations(jax.random.fold_in(rng, i), cfg.model.head_dim, a.n_hashes, a.n_buckets)) for i in lsh
    }

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params):
        def loss_fn(params):
            logits, aux = nnx.merge(graphdef, params, rest)(tokens, positions, segments, rng=rng)
            nll, n = jax_losses.summed_nll(logits, targets, mask)
            return nll / n + aux["aux_loss"], logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (j_loss, j_logits), j_grads = run(params)
    j_grads = to_torch_state(nnx.to_pure_dict(j_grads))

    tt = lambda x: _t(x).long()
    logits, aux = tmodel(tt(tokens), tt(positions), tt(segments), rotations=rotations)
    nll, n = torch_losses.summed_nll(logits, tt(targets), _t(mask))
    t_loss = nll / n + aux["aux_loss"]
    t_loss.backward()
    t_grads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}

    assert set(j_grads) == set(t_grads), sorted(set(j_grads) ^ set(t_grads))
    if a.shared_qk:
        assert not any(k.endswith("k_proj.weight") for k in t_grads)
    grad_errs = {k: rel_err(j_grads[k], t_grads[k]) for k in sorted(t_grads)}
    worst = max(grad_errs, key=grad_errs.get)
    errs = {"logits": rel_err(j_logits, logits.detach().numpy()), "loss": rel_err(float(j_loss), t_loss.item())}
    print(
        f"\n[lsh model {case}] logits {errs['logits']:.2e}, loss {errs['loss']:.2e}, "
        f"max grad err {grad_errs[worst]:.2e} ({worst})"
    )
    assert errs["logits"] <= TOL and errs["loss"] <= TOL, errs
    bad = {k: v for k, v in grad_errs.items() if not v <= TOL}
    assert not bad, bad
    # the rotations matter: other ones change the torch output
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        other = {i: torch.randn(r.shape, generator=gen) for i, r in rotations.items()}
        changed, _ = tmodel(tt(tokens), tt(positions), tt(segments), rotations=other)
    assert float((changed - logits.detach()).abs().max()) > 1e-4


@pytest.mark.parametrize("scaling,factor", [("none", 1.0), ("linear", 4.0), ("ntk", 8.0)])
def test_rotary_scaling_matches_torch(scaling, factor):
    x = jax.random.normal(jax.random.key(0), (2, 9, 3, 16))
    pos = jax.random.randint(jax.random.key(1), (2, 9), 0, 30000)
    j = rotary(x, pos, 10000.0, scaling, factor)
    t = torch_rotary(_t(x), _t(pos).long(), 10000.0, scaling, factor)
    err = rel_err(j, t.numpy())
    print(f"\n[rotary {scaling} x{factor}] rel err {err:.2e}")
    assert err <= TOL


def test_torch_ref_requires_rotations_for_lsh_layers():
    cfg = load_config(None, BASE + MODEL_CASES["mixed_layers_ntk_rope"] + [f"train.seq_len={T}"])
    tmodel = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg)))
    with pytest.raises(ValueError, match=r"LSH layer\(s\) \[0, 2\]"):
        tmodel(torch.zeros(1, 4, dtype=torch.long))
