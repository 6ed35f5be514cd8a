"""Export round trip: JAX checkpoint -> safetensors -> torch_ref -> safetensors -> JAX, and logits.

The weights go through every public step: ``python -m open_r1_jax.export`` (main), ``torch_ref.load_pretrained``,
PyTorch's own ``safetensors.torch.save_file`` of the torch_ref state_dict, ``export --from-torch``, and
``open_r1_jax.load_pretrained``. fp32 and bf16 must come back bit-identical (bf16: the fp32 master weights
rounded once, at export). ``pytest -s`` prints the logit error observed.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import open_r1_jax
import torch_ref
from open_r1_jax import export as export_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.model import build_model, split_model

LOGIT_TOL = 1e-5
CONFIG = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.dtype=float32",
    "model.kernels=xla",
    "model.init_std=0.1",
    "model.drn.n_experts=4",
    "model.drn.expert_ffn_dim=16",
    "model.moe.n_experts=8",
    "model.moe.expert_ffn_dim=16",
    "model.moe.dispatch=dense",
    "model.moe.router=sigmoid",
    "model.moe.n_shared_experts=1",
    "model.moe.route_scale=2.5",
    "train.seq_len=16",
    "train.warmup_steps=0",
]
TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A params-only checkpoint of random weights with non-zero router biases."""
    cfg = load_config(None, CONFIG)
    _, params, model_state = split_model(build_model(cfg.model, 0))
    rng = np.random.default_rng(1)
    model_state = jax.tree.map(lambda b: jnp.asarray(rng.normal(0, 0.5, b.shape).astype(np.float32)), model_state)
    run_dir = tmp_path_factory.mktemp("export") / "run"
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        ckpt.save_params(7, params, model_state, to_dict(cfg))
    return run_dir, params, model_state


def _torch_save(model: torch.nn.Module, exported, out, dtype: str) -> None:
    """What a PyTorch user does: save the state_dict with safetensors next to the config."""
    from safetensors.torch import save_file

    out.mkdir()
    shutil.copy(exported / "config.json", out / "config.json")
    state = {k: v.to(TORCH[dtype]).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_torch_jax_is_bit_identical(run, tmp_path, dtype):
    from safetensors.numpy import load_file

    run_dir, params, model_state = run
    first, torch_dir, back, again = (tmp_path / n for n in ("first", "torch", "back", "again"))
    assert export_lib.main(["--run", str(run_dir), "--out", str(first), "--dtype", dtype]) == 0
    model = torch_ref.load_pretrained(first)
    _torch_save(model, first, torch_dir, dtype)
    assert export_lib.main(["--from-torch", str(torch_dir), "--out", str(back)]) == 0
    got = open_r1_jax.load_pretrained(back)
    rounded = (lambda x: x) if dtype == "float32" else (lambda x: x.astype(jnp.bfloat16).astype(jnp.float32))
    for want, have in ((params, got.params), (model_state, got.model_state)):
        for a, b in zip(jax.tree.leaves(jax.tree.map(rounded, want)), jax.tree.leaves(have), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # and the second export writes the very same tensors
    assert export_lib.main(["--run", str(back), "--out", str(again), "--dtype", dtype]) == 0
    t1, t2 = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert set(t1) == set(t2)
    for k in t1:
        assert t1[k].dtype == t2[k].dtype and t1[k].tobytes() == t2[k].tobytes(), k


def test_exported_torch_logits_match_jax(run, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "exported"
    assert export_lib.main(["--run", str(run_dir), "--out", str(out)]) == 0
    tokens = np.random.default_rng(0).integers(0, 64, (2, 16), dtype=np.int64)
    jax_model = open_r1_jax.load_pretrained(run_dir)
    ref_logits = np.asarray(jax_model(tokens.astype(np.int32)))
    np.testing.assert_array_equal(np.asarray(open_r1_jax.load_pretrained(out)(tokens.astype(np.int32))), ref_logits)
    model = torch_ref.load_pretrained(out)
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens))
    err = float(np.max(np.abs(logits.numpy() - ref_logits)) / np.max(np.abs(ref_logits)))
    print(f"exported torch_ref vs JAX logits: max relative error {err:.2e}")
    assert err < LOGIT_TOL
