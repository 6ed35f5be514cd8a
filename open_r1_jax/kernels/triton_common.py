"""Helpers shared by the Triton kernel modules (this module imports triton; ops import it lazily)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from open_r1_jax.kernels.adapter import interpreting


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b with fp32 accumulation. IEEE=1 keeps fp32 inputs out of TF32 tensor cores; IEEE=2
    (the interpreter) multiplies in fp32: Triton's interpreter keeps bfloat16 as raw uint16 bits and
    its dot multiplies those bits (Triton 3.9), while bf16 x bf16 products are exact in fp32."""
    if IEEE == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE == 1:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


def ieee_flag(dtype) -> int:
    """The ``IEEE`` constexpr of ``mma``: 2 under the interpreter; 1 when fp32 inputs must be multiplied
    in full fp32 (XLA does so only at "highest" matmul precision); 0 otherwise."""
    if interpreting():
        return 2
    if jnp.dtype(dtype) != jnp.float32:
        return 0
    precision = str(jax.config.jax_default_matmul_precision or "default").lower()
    return int(precision in ("highest", "float32", "precision.highest"))


def pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    """Smallest power of two >= n, clipped to [lo, hi] (tl.dot needs every block side >= 16)."""
    p = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return min(p, hi) if hi else p
