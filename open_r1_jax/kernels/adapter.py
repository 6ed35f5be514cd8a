"""The one place that launches Triton kernels from JAX, and the choice between Triton and XLA.

``triton_call(*args, kernel=, out_shape=, grid=, **constexprs)`` has jax-triton's calling convention:
array and scalar inputs first, in the kernel's parameter order, then one pointer per output, then the
``tl.constexpr`` parameters as keywords. Two back ends:

- **GPU**: ``jax_triton.triton_call``. jax-triton 0.3.x names the outputs ``out_shape``, 0.4.x
  ``out_type``; the keyword is picked here from its signature. ``import jax_triton`` raises on a
  CPU-only jax, so it is imported lazily, only on a CUDA backend: importing the project never needs it.
- **Interpreter** (``TRITON_INTERPRET=1``, set before triton is first imported: ``triton.jit`` reads it
  when a kernel, or Triton's own ``tl.cdiv``/``tl.sigmoid``, is defined): the same
  ``@triton.jit`` kernels run on CPU through Triton's interpreter inside ``jax.pure_callback``, with
  torch tensors shared through dlpack. jit, ``custom_vjp`` and grad then work as on a GPU, so the whole
  JAX path is tested on CPU. Outputs start filled with NaN (integers with -1): a kernel that leaves
  an output element unwritten fails its test instead of passing on a lucky zero.

Neither back end has a vmap rule or autodiff: every kernel sits inside a ``jax.custom_vjp``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import ConfigError

log = logging.getLogger("open_r1_jax")


class KernelUnavailableError(ConfigError):
    """``model.kernels=triton`` was asked for where Triton kernels cannot run."""


def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``triton.jit`` reads it when a function is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def on_cuda() -> bool:
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return False
    if dev.platform != "gpu":
        return False
    return "rocm" not in str(getattr(dev.client, "platform_version", "")).lower()


@functools.cache
def _import(name: str) -> tuple[Any, str]:
    """(module, "") or (None, why it failed). Cached: a failed import is not retried."""
    try:
        return __import__(name), ""
    except Exception as e:  # jax_triton raises ImportError on CPU jax; anything else is as fatal
        return None, f"{type(e).__name__}: {e}"


def triton_importable() -> bool:
    return _import("triton")[0] is not None


def _availability() -> tuple[bool, str]:
    """Can Triton kernels run here, and if not, why."""
    if interpreting():
        if not triton_importable():
            return False, f"TRITON_INTERPRET=1 but triton cannot be imported ({_import('triton')[1]})"
        if _import("torch")[0] is None:
            return False, "TRITON_INTERPRET=1 but torch (the interpreter's tensors) cannot be imported"
        return True, "Triton interpreter on CPU (TRITON_INTERPRET=1)"
    if not on_cuda():
        return False, f"no CUDA device (jax backend: {jax.default_backend()})"
    if not triton_importable():
        return False, f"triton cannot be imported ({_import('triton')[1]})"
    if _import("jax_triton")[0] is None:
        return False, f"jax_triton cannot be imported ({_import('jax_triton')[1]})"
    return True, "jax-triton on CUDA"


_logged: set[tuple[str, str]] = set()


def resolve(choice: str) -> str:
    """``model.kernels`` (auto | triton | xla) -> "triton" or "xla"; the outcome is logged once."""
    if choice not in ("auto", "triton", "xla"):
        raise ConfigError(f"model.kernels: got {choice!r}; accepted: 'auto' | 'triton' | 'xla'")
    if choice == "xla":
        resolved, why = "xla", "requested"
    elif choice == "auto" and (interpreting() or not on_cuda()):
        resolved, why = "xla", "auto: Triton only on CUDA, never the interpreter"
    else:
        ok, why = _availability()
        if choice == "triton" and not ok:
            raise KernelUnavailableError(
                f"model.kernels=triton: Triton kernels cannot run here ({why}). They need a CUDA GPU with "
                "triton and jax-triton installed (pip install -e '.[gpu]'), or TRITON_INTERPRET=1 for "
                "Triton's CPU interpreter (slow; tests only). Accepted here: model.kernels=auto or xla."
            )
        resolved = "triton" if ok else "xla"
    if (choice, resolved) not in _logged:
        _logged.add((choice, resolved))
        log.info("kernels: model.kernels=%s -> %s (%s)", choice, resolved, why)
    return resolved


# ----------------------------------------------------------------------------- launching


def _grid(grid, constexprs: dict) -> tuple[int, ...]:
    g = grid(constexprs) if callable(grid) else grid
    return (g,) if isinstance(g, int) else tuple(int(v) for v in g)


def _gpu_call(args, kernel, out_shape, grid, num_warps, num_stages, constexprs):
    jt = _import("jax_triton")[0]
    if jt is None:
        raise KernelUnavailableError(f"jax_triton cannot be imported ({_import('jax_triton')[1]})")
    key = "out_type" if "out_type" in inspect.signature(jt.triton_call).parameters else "out_shape"
    return jt.triton_call(
        *args,
        kernel=kernel,
        grid=_grid(grid, constexprs),
        num_warps=num_warps,
        num_stages=num_stages,
        **{key: out_shape},
        **constexprs,
    )


def _to_torch(a):
    """A callback argument -> a CPU torch tensor, zero-copy through dlpack where possible."""
    import torch

    try:
        return torch.from_dlpack(a)
    except Exception:  # e.g. a numpy array some jax versions hand to callbacks; numpy has no bfloat16
        a = np.asarray(a)
        if a.dtype == jnp.bfloat16:
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(a.copy())


def _from_torch(t, dtype) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(jnp.bfloat16)
    return t.numpy().astype(dtype, copy=False)


def _torch_empty(shape, dtype):
    import torch

    torch_dtype = {
        jnp.float32: torch.float32,
        jnp.bfloat16: torch.bfloat16,
        jnp.float16: torch.float16,
        jnp.int32: torch.int32,
        jnp.int64: torch.int64,
    }[jnp.dtype(dtype).type]
    fill = float("nan") if torch_dtype.is_floating_point else -1
    return torch.full(tuple(shape), fill, dtype=torch_dtype)


# Triton's interpreter is not thread-safe: one launch keeps its grid in the process-wide
# ``interpreter_builder`` (``set_grid_dim`` once, then ``set_grid_idx`` per program, which
# ``tl.program_id``/``tl.num_programs`` read back), and it swaps ``triton.language``'s builtins for
# interpreted ones module-wide for the launch, restoring them at its end (triton/runtime/interpreter.py,
# ``GridExecutor.__call__``). XLA:CPU runs independent callbacks on different threads at the same time
# (flash attention's dq and dk/dv backward kernels do), so two launches interleave: a program reads the
# other launch's program id (wrong blocks, silently) or grid (``ValueError('y >= grid_dim[1]')``), or
# runs after the other launch unpatched ``tl`` ("Did you forget to add @triton.jit ?"). Launches are
# therefore serialised (the interpreter is mostly GIL-bound Python: little speed is lost). The rest of a
# callback is per call: its own torch views of its inputs and new outputs. The interpreter's copy-back of
# every tensor argument at the end of a launch does not write into the JAX input buffers shared through
# dlpack: on CPU source and destination are the same storage, and torch skips such a copy.
_interpreter_lock = threading.Lock()


def _interpreter_call(args, kernel, out_shape, grid, constexprs):
    import triton.language as tl

    if not all(type(f).__name__.startswith("Interpreted") for f in (kernel, tl.cdiv)):
        raise KernelUnavailableError(
            "TRITON_INTERPRET=1 was set after triton or the kernel modules were imported; set it before "
            "importing triton or anything from open_r1_jax/kernels/ (tests: tests/kernels/conftest.py sets it)"
        )
    flat_out, out_tree = jax.tree.flatten(out_shape)
    is_array = [isinstance(a, (jax.Array, np.ndarray)) for a in args]
    arrays = [a for a, arr in zip(args, is_array) if arr]
    launch_grid = _grid(grid, constexprs)

    def host(*host_arrays):
        it = iter(host_arrays)
        targs = [_to_torch(next(it)) if arr else a for a, arr in zip(args, is_array)]
        outs = [_torch_empty(s.shape, s.dtype) for s in flat_out]
        with _interpreter_lock:  # see above: one interpreted launch at a time in the process
            kernel[launch_grid](*targs, *outs, **constexprs)
        return [_from_torch(o, s.dtype) for o, s in zip(outs, flat_out)]

    shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in flat_out]
    return jax.tree.unflatten(out_tree, jax.pure_callback(host, shapes, *arrays))


def triton_call(
    *args: Any,
    kernel: Any,
    out_shape: Any,
    grid: int | Sequence[int] | Callable,
    num_warps: int = 4,
    num_stages: int = 2,
    **constexprs: Any,
) -> Any:
    """Run ``kernel`` on ``args`` (arrays and Python scalars, kernel order), returning ``out_shape``'s
    tree of arrays. ``constexprs`` are the kernel's ``tl.constexpr`` parameters."""
    if interpreting():
        return _interpreter_call(args, kernel, out_shape, grid, constexprs)
    return _gpu_call(args, kernel, out_shape, grid, num_warps, num_stages, constexprs)
