"""Model properties: shapes and dtypes, causality, segment isolation, remat equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from open_r1_jax.model import build_model, merge_model, split_model
from open_r1_jax.model.layers import RouterBias


def _tokens(b=2, t=24, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 256)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(micro, dtype):
    cfg = micro(f"model.dtype={dtype}", "model.moe.n_shared_experts=1")
    model = build_model(cfg.model)
    logits, aux = model(_tokens())
    assert logits.shape == (2, 24, cfg.model.vocab_size) and logits.dtype == jnp.float32
    assert aux["expert_counts"].shape == (1, 4) and aux["expert_ids"].shape == (1, 2, 24, 2)
    assert float(jnp.sum(aux["expert_counts"])) == 2 * 24 * 2  # every (token, slot) routed: none dropped
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_router_bias_is_not_a_parameter(micro):
    model = build_model(micro("model.moe.router=sigmoid").model)
    _, params, rest = split_model(model)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    assert not any("router_bias" in jax.tree_util.keystr(p) for p, _ in flat)
    assert rest["blocks"][1]["ffn"]["router_bias"].shape == (4,)
    assert isinstance(model.blocks[1].ffn.router_bias, RouterBias)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_causality(micro, router):
    model = build_model(micro(f"model.moe.router={router}", "model.moe.dispatch=dense").model)
    tok = _tokens(1, 20)
    t = 11
    changed = tok.at[0, t].set((tok[0, t] + 7) % 256)
    a, _ = model(tok)
    b, _ = model(changed)
    np.testing.assert_array_equal(np.asarray(a[0, :t]), np.asarray(b[0, :t]))
    assert float(jnp.max(jnp.abs(a[0, t:] - b[0, t:]))) > 1e-4


def test_segment_isolation(micro):
    """Changing one packed document leaves the logits of the others unchanged."""
    model = build_model(micro("model.moe.dispatch=dense").model)
    seg = jnp.array([[1] * 6 + [2] * 8 + [3] * 7 + [0] * 3])
    pos = jnp.array([list(range(6)) + list(range(8)) + list(range(7)) + [0] * 3])
    tok = _tokens(1, 24)
    changed = tok.at[0, 6:14].set((tok[0, 6:14] + 3) % 256)
    a, _ = model(tok, pos, seg)
    b, _ = model(changed, pos, seg)
    keep = np.r_[0:6, 14:21]
    np.testing.assert_array_equal(np.asarray(a[0, keep]), np.asarray(b[0, keep]))
    assert float(jnp.max(jnp.abs(a[0, 6:14] - b[0, 6:14]))) > 1e-4
    # a document packed after another equals the same document alone at position 0
    alone, _ = model(tok[:, 14:21])
    np.testing.assert_allclose(np.asarray(a[0, 14:21]), np.asarray(alone[0]), atol=2e-5, rtol=1e-5)


def test_activation_checkpoint_same_loss_and_grads(micro):
    base = micro()
    remat = micro("model.activation_checkpoint=true", "model.remat_policy=dots_saveable")
    tok = _tokens()
    out = []
    for cfg in (base, remat):
        graphdef, params, rest = split_model(build_model(cfg.model))

        def loss(p):
            logits, aux = merge_model(graphdef, p, rest)(tok)
            return jnp.mean(jax.nn.logsumexp(logits, -1)) + aux["aux_loss"]

        out.append(jax.jit(jax.value_and_grad(loss))(params))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    for g0, g1 in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(g0, g1, rtol=1e-5, atol=1e-7)


def test_tied_embeddings(micro):  # the media prefix: tests/test_multimodal.py
    model = build_model(micro("model.tie_embeddings=true").model)
    assert not hasattr(model, "lm_head")
    logits, _ = model(_tokens())
    assert logits.shape == (2, 24, 272)


def test_blocked_causal_attention_equals_dense():
    from open_r1_jax.model.attention import attention_mask, causal_attention, dot_product_attention

    b, t, h, g, k = 2, 384, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q, kk, v = (
        jax.random.normal(keys[0], (b, t, h, k)),
        jax.random.normal(keys[1], (b, t, g, k)),
        jax.random.normal(keys[2], (b, t, g, k)),
    )
    seg = jnp.concatenate(
        [jnp.ones((b, 200), jnp.int32), 2 * jnp.ones((b, 150), jnp.int32), jnp.zeros((b, 34), jnp.int32)], axis=1
    )
    mask = attention_mask(seg)
    f = lambda fn: jax.value_and_grad(lambda q, kk, v: jnp.sum(jnp.sin(fn(q, kk, v, mask))), argnums=(0, 1, 2))
    (a, ga), (d, gd) = f(causal_attention)(q, kk, v), f(dot_product_attention)(q, kk, v)
    np.testing.assert_allclose(a, d, rtol=1e-5)
    for x, y in zip(ga, gd):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tokens, dense", [(4, True), (32, False)])
def test_few_tokens_run_every_expert(tokens, dense):
    """A decode-sized call (tokens x experts <= moe.dense_token_experts) takes the dense dispatch (no
    sort of (token, slot) rows in its program), a larger one the dropless; both give the same output."""
    from open_r1_jax.config import MoEConfig
    from open_r1_jax.model.moe import MoEFeedForward

    x = jax.random.normal(jax.random.key(1), (tokens, 1, 32))
    mask = jnp.ones((tokens, 1), bool)
    out = {}
    for threshold in (0, 64):  # 0: always dropless; 64 = 16 tokens x 4 experts
        cfg = MoEConfig(n_experts=4, top_k=2, expert_ffn_dim=32, dense_token_experts=threshold)
        layer = MoEFeedForward(32, cfg, 0.3, jnp.float32, nnx.Rngs(0))
        jaxpr = str(jax.make_jaxpr(lambda x, layer=layer: layer(x, mask)[0])(x))
        assert ("sort" not in jaxpr) == (threshold > 0 and dense), threshold
        out[threshold] = layer(x, mask)[0]
    np.testing.assert_allclose(out[64], out[0], rtol=1e-5, atol=1e-6)
