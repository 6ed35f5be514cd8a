"""Fused grouped SwiGLU experts (gate/up + SiLU epilogue, down + routing-weight epilogue) and their
Triton backward against the jnp oracle, through the interpreter."""

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip(
    "triton", reason="triton is not installed (pip install -e '.[test]'); the kernel tests run Triton's CPU interpreter"
)
pytest.importorskip("torch", reason="torch (the Triton interpreter's tensors) is not installed")

from kernel_checks import check_op, rel_err  # noqa: E402

from open_r1_jax.kernels import ops  # noqa: E402
from open_r1_jax.kernels.fused_ffn import grouped_swiglu  # noqa: E402
from open_r1_jax.kernels.grouped_matmul import Blocks  # noqa: E402

CASES = {
    # rows, D, F, group sizes, blocks
    "awkward": (100, 48, 40, [30, 0, 47, 20], Blocks(bm=16, bn=16, bk=16)),
    "awkward_big_blocks": (100, 48, 40, [30, 0, 47, 23], None),
    "single_token": (1, 32, 24, [0, 1, 0], None),
}


def _args(rows, d, f, n_experts, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(4), 5)
    x = jax.random.normal(ks[0], (rows, d))
    wg = 0.2 * jax.random.normal(ks[1], (n_experts, d, f))
    wu = 0.2 * jax.random.normal(ks[2], (n_experts, d, f))
    wd = 0.2 * jax.random.normal(ks[3], (n_experts, f, d))
    scale = jax.random.uniform(ks[4], (rows,), minval=0.1, maxval=1.0)
    return tuple(a.astype(dtype) for a in (x, wg, wu, wd)) + (scale,)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_swiglu_matches_oracle(case):
    rows, d, f, sizes, blocks = CASES[case]
    gs = jnp.asarray(sizes, jnp.int32)
    check_op(
        f"ffn[{case}]",
        lambda x, wg, wu, wd, s: grouped_swiglu(x, gs, wg, wu, wd, s, blocks),
        lambda x, wg, wu, wd, s: ops.grouped_swiglu_reference(x, gs, wg, wu, wd, s),
        _args(rows, d, f, len(sizes)),
        (0, 1, 2, 3, 4),
    )


def test_bfloat16_runs_and_is_close():
    """bf16 in, bf16 out, fp32 accumulation: close to the fp32 oracle on the same (rounded) inputs."""
    gs = jnp.asarray([20, 0, 13], jnp.int32)
    x, wg, wu, wd, s = _args(33, 32, 32, 3, jnp.bfloat16)
    y = ops.grouped_swiglu(x, gs, wg, wu, wd, s, impl="triton")
    f32 = lambda a: a.astype(jnp.float32)
    ref = ops.grouped_swiglu_reference(f32(x), gs, f32(wg), f32(wu), f32(wd), s)
    assert y.dtype == jnp.bfloat16 and rel_err(f32(y), ref) < 2e-2
    dx = jax.jit(jax.grad(lambda x: jnp.sum(f32(ops.grouped_swiglu(x, gs, wg, wu, wd, s, impl="triton")))))(x)
    ref = lambda x: jnp.sum(ops.grouped_swiglu_reference(x, gs, f32(wg), f32(wu), f32(wd), s))
    dx_ref = jax.jit(jax.grad(ref))(f32(x))
    assert dx.dtype == jnp.bfloat16 and rel_err(f32(dx), dx_ref) < 3e-2
