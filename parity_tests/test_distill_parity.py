"""Distillation loss: JAX vs torch_ref on a teacher and a smaller student (loss terms and the student's
gradients), and the loss's gradient scale against its closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_ref
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.model import build_model, split_model
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training.stages.distill import cached_kl, distill_token_losses
from open_r1_jax.training.teacher_cache import top_k_logprobs
from torch_ref import distill as torch_distill

BASE = [
    "model.vocab_size=264",
    "model.n_layers=2",
    "model.drn_layers=1",
    "model.n_kv_heads=1",
    "model.head_dim=8",
    "model.max_seq_len=64",
    "model.drn.n_experts=2",
    "model.moe.n_experts=4",
    "model.init_std=0.1",
    "train.seq_len=32",
]
TEACHER = BASE + ["model.d_model=32", "model.n_heads=4", "model.drn.expert_ffn_dim=32", "model.moe.expert_ffn_dim=32"]
STUDENT = BASE + ["model.d_model=16", "model.n_heads=2", "model.drn.expert_ffn_dim=16", "model.moe.expert_ffn_dim=16"]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _torch(model, cfg):
    tm = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg.model)))
    state = to_torch_state(nnx.to_pure_dict(nnx.state(model)))
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return tm


@pytest.mark.parametrize("alpha, temperature", [(0.5, 2.0), (1.0, 1.0), (0.0, 3.0)])
def test_distill_loss_and_student_grads_match(alpha, temperature):
    tcfg, scfg = load_config(None, TEACHER), load_config(None, STUDENT)
    teacher, student = build_model(tcfg.model, seed=1), build_model(scfg.model, seed=2)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 25)).astype(np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = np.broadcast_to(np.arange(24, dtype=np.int32), inputs.shape)
    seg = np.ones_like(inputs)
    seg[1, 18:] = 0  # padding: out of the mean
    mask = (seg > 0).astype(np.float32)

    t_logits = teacher(jnp.asarray(inputs), jnp.asarray(positions), jnp.asarray(seg))[0]
    graphdef, params, rest = split_model(student)

    def jloss(p):
        logits = nnx.merge(graphdef, p, rest)(jnp.asarray(inputs), jnp.asarray(positions), jnp.asarray(seg))[0]
        loss, kl, ce = distill_token_losses(logits, t_logits, jnp.asarray(targets), alpha, temperature)
        return jnp.sum(loss * mask) / mask.sum(), (jnp.sum(kl * mask) / mask.sum(), jnp.sum(ce * mask) / mask.sum())

    (jl, (jkl, jce)), jg = jax.value_and_grad(jloss, has_aux=True)(params)

    tt, ts = _torch(teacher, tcfg), _torch(student, scfg)
    tin, tpos, tseg = (torch.from_numpy(np.array(x)).long() for x in (inputs, positions, seg))
    with torch.no_grad():
        tt_logits = tt(tin, tpos, tseg)[0]
    loss, kl, ce = torch_distill.distill_token_losses(
        ts(tin, tpos, tseg)[0], tt_logits, torch.from_numpy(targets), alpha, temperature
    )
    m = torch.from_numpy(mask)
    tl = (loss * m).sum() / m.sum()
    tl.backward()
    errs = {
        "loss": rel(jl, tl.item()),
        "kl": rel(jkl, ((kl * m).sum() / m.sum()).item()),
        "ce": rel(jce, ((ce * m).sum() / m.sum()).item()),
    }
    tgrads = {k: p.grad.numpy() for k, p in ts.named_parameters() if p.grad is not None}
    jgrads = to_torch_state(jax.device_get(jg))
    gerr = max(rel(jgrads[k], tgrads[k]) for k in tgrads if np.any(tgrads[k]))
    print(f"\n[alpha={alpha} T={temperature}] loss {tl.item():.5f}; rel errs {errs}; max grad rel err {gerr:.1e}")
    assert float(jkl) > 0 and max(errs.values()) < 1e-5, errs
    assert gerr < 1e-4


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distill_gradient_scale_is_hintons(temperature):
    """d/dz [T^2 KL(softmax(t/T) || softmax(z/T))] = T (softmax(z/T) - softmax(t/T)); CE's is softmax(z) - onehot.
    A missing or doubled T^2 (a gradient-scale bug that comparing trained parameters would hide) fails."""
    rng = np.random.default_rng(1)
    z, t = (jnp.asarray(rng.normal(size=(1, 3, 11)) * 3, jnp.float32) for _ in range(2))
    y = jnp.asarray([[1, 5, 10]])
    for alpha in (1.0, 0.0, 0.3):
        g = jax.grad(lambda z: jnp.sum(distill_token_losses(z, t, y, alpha, temperature)[0]))(z)
        soft = temperature * (jax.nn.softmax(z / temperature) - jax.nn.softmax(t / temperature))
        hard = jax.nn.softmax(z) - jax.nn.one_hot(y, 11)
        np.testing.assert_allclose(g, alpha * soft + (1 - alpha) * hard, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k, temperature", [(4, 1.0), (7, 2.0), (11, 2.0)])
def test_cached_top_k_kl_matches_torch_and_is_exact_at_k_equal_v(k, temperature):
    """The teacher cache's loss: top-k + rest KL against torch_ref (value and student gradient), a
    lower bound of the full KL that equals it once every token is kept; the cached arrays describe a
    distribution (top-k mass + rest mass = 1)."""
    rng = np.random.default_rng(2)
    z, t = (jnp.asarray(rng.normal(size=(2, 3, 11)) * 2, jnp.float32) for _ in range(2))
    ids, logp, rest = top_k_logprobs(t, temperature, k)
    np.testing.assert_allclose(jnp.logaddexp(jax.nn.logsumexp(logp, -1), rest), 0.0, atol=1e-6)
    kl, g = jax.value_and_grad(lambda z: jnp.sum(cached_kl(z, ids, logp, rest, temperature)))(z)
    tz = torch.from_numpy(np.array(z)).requires_grad_()
    targs = (torch.from_numpy(np.array(a)) for a in (ids, logp, rest))
    tkl = torch_distill.cached_kl(tz, *targs, temperature).sum()
    tkl.backward()
    assert rel(kl, tkl.item()) < 1e-5 and rel(g, tz.grad.numpy()) < 1e-5
    full = jnp.sum(distill_token_losses(z, t, jnp.zeros((2, 3), jnp.int32), 1.0, temperature)[1])
    if k >= 11:
        np.testing.assert_allclose(kl, full, rtol=1e-6)
        g_full = jax.grad(lambda z: jnp.sum(distill_token_losses(z, t, jnp.zeros((2, 3), int), 1.0, temperature)[1]))(z)
        np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-7)
    else:
        assert 0 < kl < full  # coarsening loses information, never adds it
