"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is first imported (``triton.jit`` reads it when a kernel,
or Triton's own ``tl.cdiv``/``tl.sigmoid``, is defined), so it is set here, at collection. Without
triton (or torch, the interpreter's tensors) every kernel test is skipped with the reason; nothing
fails at collection.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"
