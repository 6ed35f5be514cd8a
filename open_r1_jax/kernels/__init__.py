"""Triton kernels, their jnp oracles, and the JAX bindings.

- ``kernels.ops``: what the model calls (grouped matmul, fused grouped SwiGLU experts, flash
  attention), each with ``impl="triton" | "xla"`` and a ``*_reference`` oracle.
- ``kernels.adapter``: the one ``triton_call`` (jax-triton on CUDA, Triton's interpreter on CPU under
  ``TRITON_INTERPRET=1``) and ``resolve(model.kernels)``.
- ``kernels.grouped_matmul``, ``kernels.fused_ffn``, ``kernels.flash_attention``: the ``@triton.jit``
  kernels and their ``custom_vjp`` bindings. They import triton; nothing else here does, so importing
  the project never needs triton or jax-triton.
"""

from open_r1_jax.kernels.adapter import KernelUnavailableError, interpreting, resolve

__all__ = ["KernelUnavailableError", "interpreting", "resolve"]
