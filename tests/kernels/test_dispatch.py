"""Kernel dispatch: model.kernels resolution and its log line, the jax-triton adapter (0.3.x out_shape /
0.4.x out_type), lazy imports, and the segment ids the model hands to the flash kernel."""

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from open_r1_jax.config import ConfigError
from open_r1_jax.kernels import KernelUnavailableError, adapter, resolve
from open_r1_jax.model.attention import attention_mask, segment_ids_from_mask


def test_resolve_on_cpu(monkeypatch):
    assert resolve("xla") == "xla"
    assert resolve("auto") == "xla"  # auto never picks the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve("auto") == "xla"
    with pytest.raises(KernelUnavailableError, match="CUDA GPU.*TRITON_INTERPRET=1") as e:
        resolve("triton")
    assert isinstance(e.value, ConfigError) and "no CUDA device" in str(e.value)
    with pytest.raises(ConfigError, match="model.kernels: got 'cuda'"):
        resolve("cuda")


def test_resolve_triton_under_interpreter_is_logged_once(monkeypatch, caplog):
    pytest.importorskip("triton", reason="triton is not installed")
    pytest.importorskip("torch", reason="torch is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(adapter, "_logged", set())
    with caplog.at_level(logging.INFO, logger="open_r1_jax"):
        assert resolve("triton") == "triton" and resolve("triton") == "triton"
    lines = [r.getMessage() for r in caplog.records if r.name == "open_r1_jax"]
    assert lines == ["kernels: model.kernels=triton -> triton (Triton interpreter on CPU (TRITON_INTERPRET=1))"]


def _fake_jax_triton(keyword):
    calls = []

    if keyword == "out_type":

        def triton_call(*args, kernel, out_type=None, grid, num_warps=None, num_stages=None, **kwargs):
            calls.append(dict(args=args, out=out_type, grid=grid, kwargs=kwargs))
            return jnp.zeros(out_type.shape, out_type.dtype)
    else:

        def triton_call(*args, kernel, out_shape, grid, num_warps=None, num_stages=None, **metaparams):
            calls.append(dict(args=args, out=out_shape, grid=grid, kwargs=metaparams))
            return jnp.zeros(out_shape.shape, out_shape.dtype)

    return type("FakeJaxTriton", (), {"triton_call": staticmethod(triton_call)}), calls


@pytest.mark.parametrize("keyword", ["out_shape", "out_type"])  # jax-triton 0.3.x, 0.4.x
def test_adapter_speaks_both_jax_triton_versions(monkeypatch, keyword):
    fake, calls = _fake_jax_triton(keyword)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(adapter, "_import", lambda name: (fake, ""))
    out = jax.ShapeDtypeStruct((4, 8), jnp.float32)
    y = adapter.triton_call(jnp.ones(3), 7, kernel=object(), out_shape=out, grid=lambda m: (m["BM"] // 8,), BM=16)
    assert y.shape == (4, 8) and calls[0]["out"] == out and calls[0]["grid"] == (2,)
    assert calls[0]["kwargs"] == {"BM": 16} and calls[0]["args"][1] == 7


def test_importing_the_project_needs_neither_triton_nor_jax_triton():
    code = (
        "import sys; import open_r1_jax.model, open_r1_jax.kernels.ops; "
        "from open_r1_jax.model import build_model; "
        "bad = [m for m in ('triton', 'jax_triton') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_segment_ids_from_mask_rebuild_the_same_mask():
    seg = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5], [1, 2, 1, 2, 0, 1, 0, 2]])
    mask = attention_mask(seg)
    np.testing.assert_array_equal(attention_mask(segment_ids_from_mask(mask)), mask)
