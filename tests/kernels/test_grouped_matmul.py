"""Grouped matmul kernels (forward, dX, dW) against the jnp oracle, through the interpreter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip(
    "triton", reason="triton is not installed (pip install -e '.[test]'); the kernel tests run Triton's CPU interpreter"
)
pytest.importorskip("torch", reason="torch (the Triton interpreter's tensors) is not installed")

from kernel_checks import check_op  # noqa: E402

from open_r1_jax.kernels import ops  # noqa: E402
from open_r1_jax.kernels.grouped_matmul import Blocks, grouped_matmul, tile_schedule  # noqa: E402

SMALL = Blocks(bm=16, bn=16, bk=16)  # several tiles per expert, partial tiles, K loop of 3 steps
CASES = {
    # rows, K, N, group sizes, blocks: an empty expert, sizes not multiples of 16, 3 rows after the groups
    "awkward": (100, 48, 40, [30, 0, 47, 20], SMALL),
    "awkward_big_blocks": (100, 48, 40, [30, 0, 47, 20], None),
    "single_token": (1, 32, 24, [0, 1, 0], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grouped_matmul_matches_oracle(case):
    rows, k, n, sizes, blocks = CASES[case]
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (rows, k), jnp.float32)
    w = jax.random.normal(kw, (len(sizes), k, n), jnp.float32)
    gs = jnp.asarray(sizes, jnp.int32)
    check_op(
        f"gmm[{case}]",
        lambda x, w: grouped_matmul(x, w, gs, blocks),
        lambda x, w: ops.grouped_matmul_reference(x, w, gs),
        (x, w),
        (0, 1),
    )


def test_tile_schedule_covers_every_row_once_within_one_expert():
    sizes = jnp.asarray([5, 0, 16, 17, 1], jnp.int32)
    rows, bm = 45, 8  # 39 grouped rows + 6 rows of the zero group
    meta = np.asarray(tile_schedule(sizes, rows, bm))
    owner = np.repeat(np.arange(6), np.r_[np.asarray(sizes), rows - 39])
    seen = np.zeros(rows, int)
    for e, start, end in meta.T:
        assert end - start <= bm
        seen[start:end] += 1
        assert (owner[start:end] == e).all()
    assert (seen == 1).all()


def test_xla_path_matches_oracle():
    x = jax.random.normal(jax.random.key(2), (37, 16))
    w = jax.random.normal(jax.random.key(3), (3, 16, 8))
    gs = jnp.asarray([10, 0, 25], jnp.int32)
    np.testing.assert_allclose(
        ops.grouped_matmul(x, w, gs, "xla"), ops.grouped_matmul_reference(x, w, gs), rtol=1e-5, atol=1e-5
    )
