"""Helpers of the kernel tests: the fp32 tolerance and the error measure."""

from __future__ import annotations

import numpy as np

TOL = 1e-4  # fp32: max |kernel - oracle| / max |oracle|, forward and every gradient


def rel_err(a, b) -> float:
    """max |a - b| / max |b|, the scale floored at 1e-2: an exactly-zero oracle (dQ of a lone token,
    whose softmax has one entry) is compared absolutely instead of dividing rounding noise by zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-2)) if b.size else 0.0


def assert_close(name: str, a, b, tol: float = TOL) -> float:
    """Assert and print (``pytest -s`` shows the errors) the relative error of ``a`` against ``b``."""
    assert np.all(np.isfinite(np.asarray(a, np.float64))), f"{name}: non-finite values"
    err = rel_err(a, b)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    print(f"{name}: {err:.2e}")
    return err


def check_op(name: str, fn, ref, args: tuple, argnums: tuple[int, ...], tol: float = TOL, seed: int = 0):
    """Forward of jit(fn) against ref, then the gradients of <fn(args), c> for a random cotangent c,
    w.r.t. ``argnums``, through jit + custom_vjp. Returns {"fwd": err, "d<i>": err, ...}."""
    import jax
    import jax.numpy as jnp

    y, y_ref = jax.jit(fn)(*args), jax.jit(ref)(*args)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype, (y.shape, y.dtype, y_ref.shape, y_ref.dtype)
    errs = {"fwd": assert_close(f"{name} fwd", y, y_ref, tol)}
    ct = jax.random.normal(jax.random.key(seed), y_ref.shape, jnp.float32)

    def dot(f):
        return lambda *a: jnp.sum(f(*a).astype(jnp.float32) * ct)

    grads = jax.jit(jax.grad(dot(fn), argnums))(*args)
    grads_ref = jax.jit(jax.grad(dot(ref), argnums))(*args)
    for i, g, g_ref in zip(argnums, grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        errs[f"d{i}"] = assert_close(f"{name} d{i}", g, g_ref, tol)
    return errs
