"""Export CLI: Hugging Face folder layout, sharding, refusals, --from-hf / --from-torch, load_pretrained.

Numerical parity with torch_ref (logits, the JAX -> torch -> JAX round trip) is in
parity_tests/test_export_parity.py; with transformers (export and Llama / Mixtral imports) in
parity_tests/test_hf_parity.py.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from micro import MICRO

import open_r1_jax
from open_r1_jax import export as export_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import MODEL_RUNTIME_KEYS, Config, load_config, to_dict
from open_r1_jax.model import build_model, split_model
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.step import init_state


def _header(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with checkpoints at steps 2 and 4 (random weights, sigmoid router biases)."""
    tmp_path = tmp_path_factory.mktemp("export")
    cfg = load_config(None, MICRO + ["model.moe.router=sigmoid", "model.moe.n_shared_experts=1"])
    _, params, model_state = split_model(build_model(cfg.model, 0))
    state = init_state(params, model_state, make_optimizer(cfg.train), cfg)
    rng = np.random.default_rng(0)
    states = []
    with Checkpointer(tmp_path / "run" / "checkpoints") as ckpt:
        for step in (2, 4):
            state = jax.tree.map(
                lambda x: (
                    jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype))
                    if jnp.issubdtype(x.dtype, jnp.floating)
                    else x
                ),
                state,
            )
            ckpt.save(step, state, config=to_dict(cfg))
            states.append(state)
    return tmp_path / "run", cfg, states


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_layout_refusal_and_overwrite(run, tmp_path, capsys):
    run_dir, cfg, states = run
    out = tmp_path / "out"
    assert export_lib.main(["--run", str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "configuration_sandwich.py",
        "generation_config.json",
        "model.safetensors",
        "modeling_sandwich.py",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "open_r1_sandwich" and hf["architectures"] == ["SandwichForCausalLM"]
    assert hf["auto_map"]["AutoModelForCausalLM"] == "modeling_sandwich.SandwichForCausalLM"
    want = {k: v for k, v in to_dict(cfg)["model"].items() if k not in MODEL_RUNTIME_KEYS}
    assert {k: hf[k] for k in want} == want and hf["dtype"] == "float32" and hf["eos_token_id"] == 256
    header = _header(out / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert "blocks.1.ffn.router_bias" in header and "blocks.1.ffn.shared.gate_proj.weight" in header
    assert {v["dtype"] for v in header.values()} == {"F32"}
    got = open_r1_jax.load_pretrained(out)  # the latest step, 4
    _same({"p": got.params, "m": got.model_state}, {"p": states[1]["params"], "m": states[1]["model_state"]})

    assert export_lib.main(["--run", str(run_dir), "--out", str(out)]) == 1
    assert "already exists; choose a new folder, or pass --overwrite" in capsys.readouterr().err
    assert (
        export_lib.main(["--run", str(run_dir), "--step", "2", "--out", str(out), "--overwrite", "--dtype", "bfloat16"])
        == 0
    )
    assert {v["dtype"] for k, v in _header(out / "model.safetensors").items() if k != "__metadata__"} == {"BF16"}
    got = open_r1_jax.load_pretrained(out)
    want = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), states[0]["params"])
    _same(got.params, want)
    assert export_lib.main(["--run", str(run_dir), "--step", "3", "--out", str(tmp_path / "x")]) == 1
    assert "no checkpoint of step 3; available: [2, 4]" in capsys.readouterr().err


def test_sharded_export_round_trips(run, tmp_path):
    run_dir, cfg, states = run
    out = tmp_path / "sharded"
    assert (
        export_lib.main(
            ["--checkpoint", str(run_dir / "checkpoints" / "2"), "--out", str(out), "--max-shard-size", "20KB"]
        )
        == 0
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(set(index["weight_map"].values())) == shards and not (out / "model.safetensors").exists()
    sizes = {}
    for name in shards:
        header = _header(out / name)
        assert header.pop("__metadata__") == {"format": "pt"}
        assert all(index["weight_map"][k] == name for k in header)
        sizes[name] = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
        assert sizes[name] <= 20_000 or len(header) == 1
    assert index["metadata"]["total_size"] == sum(sizes.values())
    for p in out.iterdir():  # JSON, Python source and safetensors only: no pickle
        assert p.suffix in (".json", ".safetensors", ".py"), p
        if p.suffix == ".py":
            continue
        json.loads(p.read_text()) if p.suffix == ".json" else _header(p)
    got = open_r1_jax.load_pretrained(out)
    _same({"p": got.params, "m": got.model_state}, {"p": states[0]["params"], "m": states[0]["model_state"]})


def test_from_torch_writes_a_params_only_run(run, tmp_path, capsys):
    run_dir, cfg, states = run
    exported, back = tmp_path / "exported", tmp_path / "back"
    assert export_lib.main(["--run", str(run_dir), "--out", str(exported)]) == 0
    assert export_lib.main(["--from-torch", str(exported), "--out", str(back)]) == 0
    assert sorted(p.name for p in (back / "checkpoints" / "0").iterdir() if p.is_dir()) == ["config", "model"]
    got = open_r1_jax.load_pretrained(back)
    assert got.step == 0
    _same({"p": got.params, "m": got.model_state}, {"p": states[1]["params"], "m": states[1]["model_state"]})
    # a weight of the wrong shape is named
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(exported / "model.safetensors"))
    tensors["blocks.0.attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(exported / "model.safetensors"), metadata={"format": "pt"})
    assert export_lib.main(["--from-torch", str(exported), "--out", str(tmp_path / "bad")]) == 1
    assert "blocks.0.attn.q_proj.weight: shape (3, 3)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "exported"]  # nothing written, no partial folder


def test_params_only_checkpoint_restores_into_a_fresh_optimizer(run, tmp_path):
    run_dir, cfg, states = run
    exported, back = tmp_path / "exported", tmp_path / "back"
    export_lib.export(run_dir, exported)
    export_lib.import_model(exported, back)
    _, params, model_state = split_model(build_model(cfg.model, 1))
    fresh = init_state(params, model_state, make_optimizer(cfg.train), cfg)
    with Checkpointer(back / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 0
        got = ckpt.restore(0, fresh)
    _same(got["params"], states[1]["params"])
    _same(got["opt_state"], fresh["opt_state"])
    assert int(got["step"]) == 0


def test_parse_size():
    assert export_lib.parse_size("5GB") == 5 * 10**9 and export_lib.parse_size("500MiB") == 500 * 2**20
    assert export_lib.parse_size("1000") == 1000 and export_lib.parse_size("1.5kb") == 1500
    with pytest.raises(ValueError, match="max-shard-size"):
        export_lib.parse_size("5 parsecs")


def test_torch_ref_accepts_every_jax_model_key():
    """config.json holds the whole JAX config; torch_ref must know or ignore every model key."""
    import torch_ref

    torch_ref.TorchModelConfig.from_dict(to_dict(Config()))


def test_import_stays_light():
    code = (
        "import sys, open_r1_jax; assert not {'jax', 'flax', 'orbax'} & set(sys.modules); open_r1_jax.load_pretrained"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
