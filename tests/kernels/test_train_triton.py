"""The model trains with model.kernels=triton (Triton interpreter on CPU) with the losses of xla."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip(
    "triton", reason="triton is not installed (pip install -e '.[test]'); the kernel tests run Triton's CPU interpreter"
)
pytest.importorskip("torch", reason="torch (the Triton interpreter's tensors) is not installed")

from open_r1_jax.model import (
    build_model,  # noqa: E402
    split_model,  # noqa: E402
)
from open_r1_jax.training.optim import make_optimizer  # noqa: E402
from open_r1_jax.training.stages import Pretrain  # noqa: E402
from open_r1_jax.training.step import init_state, make_train_step  # noqa: E402


def _batches(cfg, n):
    b, t = cfg.train.global_batch, cfg.train.seq_len
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tok = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
        seg = np.ones((b, t), np.int32)
        seg[0, 11:], seg[0, 23:] = 2, 3  # a packed row: three documents
        seg[1, -5:] = 0  # padding
        start = np.where(seg[0] == 2, 11, np.where(seg[0] == 3, 23, 0))
        pos = np.broadcast_to(np.arange(t), (b, t)).copy()
        pos[0] -= start
        out.append({"inputs": tok[:, :-1], "targets": tok[:, 1:], "positions": pos, "segment_ids": seg})
    return [{k: jnp.asarray(v) for k, v in batch.items()} for batch in out]


def _train(cfg, batches):
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    tx = make_optimizer(cfg.train)
    state = init_state(params, model_state, tx, cfg)
    step = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg))
    metrics = []
    for batch in batches:
        state, m = step(state, batch)
        metrics.append({k: float(m[k]) for k in ("loss", "grad_norm", "aux_loss")})
    return state, metrics


def test_three_steps_match_xla(micro):
    batches = _batches(micro(), 1) * 3  # one batch thrice: the loss must fall
    common = (
        "model.moe.n_shared_experts=1",
        "model.moe.router=sigmoid",
        "train.micro_batch=2",
        "model.moe.dense_token_experts=0",  # 64 tokens x 4 experts would take the dense path, not the kernel
        "train.lr=3e-3",
        "train.warmup_steps=0",
    )
    s_xla, m_xla = _train(micro("model.kernels=xla", *common), batches)
    s_tri, m_tri = _train(micro("model.kernels=triton", *common), batches)
    for a, b in zip(m_tri, m_xla):
        print(a, b)
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-4 * abs(b[key]) + 1e-7, (key, a, b)
    assert m_xla[-1]["loss"] < m_xla[0]["loss"]
    for a, b in zip(jax.tree.leaves(s_tri["params"]), jax.tree.leaves(s_xla["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
