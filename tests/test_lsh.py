"""LSH attention: equals full attention in the limit, masks, rotations from the rng, remat, train step,
config validation, rotary scaling. Parity with torch_ref is in parity_tests/test_lsh_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from open_r1_jax.config import ConfigError
from open_r1_jax.model import build_model, merge_model, split_model
from open_r1_jax.model.attention import attention_mask, dot_product_attention
from open_r1_jax.model.layers import rotary
from open_r1_jax.model.lsh_attention import lsh_attention, lsh_rotations
from open_r1_jax.training.losses import summed_nll
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.step import init_state, make_train_step

B, T, H, G, K = 2, 13, 4, 2, 8
SEGMENTS = jnp.array([[1] * 5 + [2] * 6 + [0] * 2, [1] * 13])  # packed row with padding; plain row
LSH = ("model.attention.kind=lsh", "model.attention.n_buckets=4", "model.attention.chunk_size=8")
DRN = ("model.drn_layers=2",)  # both blocks dense (DRN): the MoE is not under test here, and compiles slower


def _qkv(seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, K)),
        jax.random.normal(kk, (B, T, G, K)),
        jax.random.normal(kv, (B, T, G, K)),
    )


def _tokens(b=2, t=24, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 256)


def _jit(model):
    """Jitted logits of ``model`` (one compilation is cheaper than op-by-op on 2 cores)."""
    return jax.jit(lambda tok, pos=None, rng=None: model(tok, pos, rng=rng)[0])


def test_one_bucket_and_one_chunk_is_full_causal_attention(micro):
    q, k, v = _qkv()
    rot = lsh_rotations(jax.random.key(1), K, 3, 1)
    out = jax.jit(lsh_attention, static_argnums=(5, 6, 7))(q, k, v, SEGMENTS, rot, 1, T, False)
    ref = dot_product_attention(q, k, v, attention_mask(SEGMENTS))
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    # the same through the whole model: LSH layers draw the same parameters as full ones
    tok = _tokens()
    full = build_model(micro(*DRN).model)
    lsh = build_model(
        micro(*DRN, "model.attention.kind=lsh", "model.attention.n_buckets=1", "model.attention.chunk_size=32").model
    )
    np.testing.assert_allclose(_jit(lsh)(tok), _jit(full)(tok), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared_qk", [False, True])
def test_no_value_from_the_future_or_another_segment(shared_qk):
    """d out_i / d v_j = 0 unless j <= i in the same segment (several buckets, rounds and chunks)."""
    q, k, v = _qkv()
    rot = lsh_rotations(jax.random.key(2), K, 3, 4)
    jac = jax.jit(jax.jacobian(lambda vv: lsh_attention(q, k, vv, SEGMENTS, rot, 4, 4, shared_qk)))(v)
    touch = np.abs(np.asarray(jac)).sum(axis=(2, 3, 6, 7))  # [B,T,B,T]
    seg = np.asarray(SEGMENTS)
    for b in range(B):
        allowed = np.tril(np.ones((T, T), bool)) & (seg[b][:, None] == seg[b][None, :])
        assert not np.any(touch[b, :, b][~allowed]), b
        assert np.all(touch[b, :, 1 - b] == 0)
    assert np.isfinite(np.asarray(jac)).all()


def test_shared_qk_attends_to_itself_only_when_alone():
    q, _, v = _qkv()
    rot = lsh_rotations(jax.random.key(1), K, 2, 1)
    attend = jax.jit(lambda vv: lsh_attention(q, None, vv, SEGMENTS, rot, 1, T, True))
    jac = jax.jit(jax.jacobian(attend))(v)
    self_weight = np.abs(np.einsum("bthkbtgk->bt", np.asarray(jac)))  # d out_bt / d v_bt
    first = np.array([[True] + [False] * 4 + [True] + [False] * 5 + [True, False], [True] + [False] * 12])
    assert np.all(self_weight[first] > 0.5) and np.all(self_weight[~first] < 1e-6)
    out = attend(v)
    np.testing.assert_allclose(out[0, 0], jnp.repeat(v, H // G, axis=2)[0, 0], rtol=1e-6)


def test_rotations_come_from_the_rng(micro):
    model = _jit(build_model(micro(*DRN, *LSH).model))
    tok = _tokens()
    a = model(tok, rng=jax.random.key(5))
    b = model(tok, rng=jax.random.key(5))
    c = model(tok, rng=jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-4
    # no rng (evaluation): the fixed key(model.attention.lsh_seed)
    np.testing.assert_array_equal(model(tok), model(tok, rng=jax.random.key(0)))


def test_activation_checkpoint_draws_the_same_rotations(micro):
    """Mixed layers (full, LSH): the scan path folds the same per-layer keys as the loop."""
    tok = _tokens()
    out = []
    for extra in ((), ("model.activation_checkpoint=true",)):
        cfg = micro(
            *DRN,
            "model.attention.lsh_layers=[1]",
            "model.attention.n_buckets=4",
            "model.attention.chunk_size=8",
            "model.attention.shared_qk=true",
            *extra,
        )
        graphdef, params, rest = split_model(build_model(cfg.model))

        def loss(p):
            logits, aux = merge_model(graphdef, p, rest)(tok, rng=jax.random.key(3))
            return jnp.mean(jax.nn.logsumexp(logits, -1)) + aux["aux_loss"]

        out.append(jax.jit(jax.value_and_grad(loss))(params))
        assert "wk" not in params["blocks"][1]["attn"] and "wk" in params["blocks"][0]["attn"]
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_train_step_passes_an_rng_per_step(micro):
    """The step's loss is the loss under rotations fold_in(fold_in(key(train.seed), step), micro-batch)."""
    cfg = micro(*DRN, *LSH, "train.global_batch=2", "train.seq_len=16", "train.seed=4")
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    tx = make_optimizer(cfg.train)
    state = init_state(params, model_state, tx, cfg)
    tok = np.asarray(_tokens(2, 17))
    batch = {
        "inputs": tok[:, :-1],
        "targets": tok[:, 1:],
        "positions": np.tile(np.arange(16), (2, 1)),
        "segment_ids": np.ones((2, 16), np.int32),
    }
    _, metrics = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg))(state, batch)

    @jax.jit
    def loss(rng):
        logits, _ = merge_model(graphdef, params, model_state)(
            batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng
        )
        nll, n = summed_nll(logits, batch["targets"], batch["segment_ids"] > 0)
        return nll / n

    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(4), 0), 0)
    np.testing.assert_allclose(metrics["loss"], loss(step_key), rtol=1e-6)
    assert abs(float(metrics["loss"]) - float(loss(jax.random.key(0)))) > 1e-6  # not the eval rotations


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model.attention.n_buckets=3"], "model.attention.n_buckets: got 3"),
        (["model.attention.n_hashes=0"], "model.attention.n_hashes"),
        (["model.attention.chunk_size=0"], "model.attention.chunk_size"),
        (
            ["model.attention.kind=lsh", "model.attention.chunk_size=48"],
            "train.seq_len (128) must be a multiple of model.attention.chunk_size (48)",
        ),
        (["model.attention.rope_factor=0.5", "model.attention.rope_scaling=ntk"], "model.attention.rope_factor"),
        (["model.attention.rope_factor=4"], "no effect with rope_scaling 'none'"),
        (["model.attention.rope_scaling=yarn"], "model.attention.rope_scaling"),
    ],
)
def test_config_errors_name_the_key(overrides, fragment):
    from open_r1_jax.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)


def test_rotary_scaling(micro):
    x = jax.random.normal(jax.random.key(0), (1, 6, 2, 16))
    pos = jnp.arange(6)[None] * 100
    np.testing.assert_array_equal(rotary(x, pos, 1e4), rotary(x, pos, 1e4, "none", 1.0))
    np.testing.assert_allclose(rotary(x, pos * 4, 1e4, "linear", 4.0), rotary(x, pos, 1e4), atol=1e-5)
    np.testing.assert_allclose(rotary(x, pos, 1e4, "ntk", 4.0), rotary(x, pos, 1e4 * 4 ** (16 / 14)), atol=1e-6)
    # through the model (a full and an LSH layer): linear factor 2 at positions 2p == no scaling at p;
    # sequences longer than model.max_seq_len (64) run
    tok = _tokens(1, 80)
    pos = jnp.arange(80)[None]
    mixed = (*DRN, "model.attention.lsh_layers=[1]", "model.attention.n_buckets=4", "model.attention.chunk_size=16")
    plain = _jit(build_model(micro(*mixed).model))
    scaled = _jit(
        build_model(micro(*mixed, "model.attention.rope_scaling=linear", "model.attention.rope_factor=2").model)
    )
    np.testing.assert_allclose(scaled(tok, 2 * pos), plain(tok, pos), atol=2e-5, rtol=1e-5)
