"""Causal flash attention with segment ids and grouped-query heads (forward, dQ, dK, dV) against the
jnp oracle (the model's XLA attention), through the interpreter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip(
    "triton", reason="triton is not installed (pip install -e '.[test]'); the kernel tests run Triton's CPU interpreter"
)
pytest.importorskip("torch", reason="torch (the Triton interpreter's tensors) is not installed")

from kernel_checks import check_op, rel_err  # noqa: E402

from open_r1_jax.kernels import ops  # noqa: E402
from open_r1_jax.kernels.flash_attention import Blocks, flash_attention  # noqa: E402
from open_r1_jax.model.attention import attention_mask, dot_product_attention  # noqa: E402


def _segments(b, t):
    seg = np.ones((b, t), np.int32)
    if t >= 40:
        seg[0, 20:], seg[0, 37:] = 2, 3  # three packed documents, boundaries off the 16-blocks
        seg[-1, t - 5 :] = 0  # padding at the end of the last row
    return jnp.asarray(seg)


CASES = {
    # B, T, H, G, K, blocks
    "gqa_segments_small_blocks": (2, 50, 4, 2, 24, Blocks(bm=16, bn=16, bwd_bm=16, bwd_bn=32)),
    "gqa_segments_big_blocks": (2, 50, 4, 2, 24, None),
    "mqa": (1, 40, 3, 1, 16, Blocks(bm=32, bn=16, bwd_bm=16, bwd_bn=16)),
    "single_token": (1, 1, 2, 1, 16, None),
}


def _qkv(b, t, h, g, k, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.key(5), 3)
    return (
        jax.random.normal(kq, (b, t, h, k)).astype(dtype),
        jax.random.normal(kk, (b, t, g, k)).astype(dtype),
        jax.random.normal(kv, (b, t, g, k)).astype(dtype),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_flash_attention_matches_oracle(case):
    b, t, h, g, k, blocks = CASES[case]
    seg = _segments(b, t)
    check_op(
        f"flash[{case}]",
        lambda q, k, v: flash_attention(q, k, v, seg, blocks),
        lambda q, k, v: ops.attention_reference(q, k, v, seg),
        _qkv(b, t, h, g, k),
        (0, 1, 2),
    )


def test_oracle_is_the_model_attention():
    """The oracle is the textbook form (softmax, then probs @ v); the model's attention normalises
    after the value matmul, so they agree to fp32 rounding of the largest output, not bit for bit. A
    wrong mask or grouping moves outputs by orders of magnitude more (the second check)."""
    q, k, v = _qkv(2, 40, 4, 2, 16)
    seg = _segments(2, 40)
    oracle = np.asarray(ops.attention_reference(q, k, v, seg))
    bound = 8 * np.finfo(np.float32).eps * np.abs(oracle).max()
    np.testing.assert_allclose(dot_product_attention(q, k, v, attention_mask(seg)), oracle, rtol=0, atol=bound)
    swapped = dot_product_attention(q, k[:, :, ::-1], v[:, :, ::-1], attention_mask(seg))  # other kv heads
    assert np.abs(np.asarray(swapped) - oracle).max() > 1e3 * bound


def test_bfloat16_runs_and_is_close():
    q, k, v = _qkv(1, 40, 2, 1, 16, jnp.bfloat16)
    seg = _segments(1, 40)
    f32 = lambda a: a.astype(jnp.float32)
    o = ops.attention(q, k, v, seg, impl="triton")
    assert o.dtype == jnp.bfloat16 and rel_err(f32(o), ops.attention_reference(f32(q), f32(k), f32(v), seg)) < 2e-2
    dq = jax.jit(jax.grad(lambda q: jnp.sum(f32(ops.attention(q, k, v, seg, impl="triton")) ** 2)))(q)
    dq_ref = jax.jit(jax.grad(lambda q: jnp.sum(ops.attention_reference(q, f32(k), f32(v), seg) ** 2)))(f32(q))
    assert dq.dtype == jnp.bfloat16 and rel_err(f32(dq), dq_ref) < 5e-2
