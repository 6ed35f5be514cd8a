from pathlib import Path

import pytest

from open_r1_jax.config import ConfigError, dump_yaml, load_config, parse_overrides, replace

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cfg = load_config(path)
    assert cfg.model.n_layers >= 1 and cfg.train.steps >= 1


def test_seed_hardware_plans():
    for name, dtype in [("a100x8_base", "float16"), ("a100x16_bf16", "bfloat16"), ("a100x4_offload", "bfloat16")]:
        cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
        t = cfg.train
        assert (t.global_batch, t.steps, t.lr, t.min_lr, t.beta1, t.beta2, t.clip_norm) == (
            4096,
            500_000,
            6e-4,
            6e-6,
            0.9,
            0.95,
            1.0,
        )
        assert t.micro_batch and t.global_batch // t.micro_batch > 1  # reached by accumulation
        assert cfg.model.dtype == dtype
    assert load_config(Path(__file__).parent.parent / "configs/a100x4_offload.yaml").model.activation_checkpoint


def test_overrides_coerce_types():
    cfg = load_config(
        None,
        [
            "train.steps=7",
            "train.warmup_steps=1",
            "train.lr=1e-3",
            "model.tie_embeddings=true",
            "data.sources=[a.txt, b.jsonl]",
            "model.moe.router=sigmoid",
            "train.clip_norm=2",
        ],
    )
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.model.tie_embeddings is True
    assert cfg.data.sources == ("a.txt", "b.jsonl") and cfg.model.moe.router == "sigmoid"
    assert isinstance(cfg.train.clip_norm, float)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.stepz=3"], "unknown key 'train.stepz'"),
        (["modle.d_model=3"], "unknown key 'modle'"),
        (["train.steps=abc"], "train.steps: got 'abc'; accepted: an integer"),
        (["model.tie_embeddings=3"], "model.tie_embeddings"),
        (["model.moe.router=relu"], "accepted: 'softmax' | 'sigmoid'"),
        (["model.moe.top_k=9", "model.moe.n_experts=8"], "model.moe.top_k (9) must be <= model.moe.n_experts (8)"),
        (["model.n_heads=6", "model.n_kv_heads=4"], "model.n_heads (6) must be divisible by model.n_kv_heads (4)"),
        (["train.global_batch=10", "train.micro_batch=4"], "train.global_batch (10) must be divisible"),
        (["train.seq_len=1024"], "must be <= model.max_seq_len"),
        (["model.drn_layers=9"], "model.drn_layers"),
        (["mesh.expert=3"], "must be divisible by mesh.expert (3)"),
        (["train.lr=-1"], "train.lr"),
        (["model.head_dim=15"], "model.head_dim"),
        (["steps"], "expected key.sub=value"),
        (["train=3"], "train: expected a mapping"),
    ],
)
def test_validation_errors_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model:\n  d_modle: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'model.d_modle'"):
        load_config(bad)


def test_yaml_then_overrides_then_round_trip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 11\n  warmup_steps: 2\n  lr: 0.001\n")
    cfg = load_config(f, ["train.lr=0.002"])
    assert cfg.train.steps == 11 and cfg.train.lr == 0.002
    out = tmp_path / "resolved.yaml"
    dump_yaml(cfg, out)
    assert load_config(out) == cfg
    assert replace(cfg, **{"train.steps": 5}).train.steps == 5


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_removed_and_ignored_keys_are_named():
    from open_r1_jax.config.checks import ignored_keys

    with pytest.raises(ConfigError, match="unknown key 'data.shuffle'"):
        load_config(None, ["data.shuffle=false"])
    assert ignored_keys(load_config(None, [])) == []
    cfg = load_config(
        None,
        [
            "data.clean.min_tokens=10",
            "data.mixture_names=[a]",
            "data.mixture_weights=[1]",
            "model.moe.capacity_factor=1.25",
            "train.loss_scale=1024",
            "dpo.beta=0.3",
            "model.attention.n_hashes=4",
        ],
    )
    keys = dict(ignored_keys(cfg))
    assert set(keys) == {
        "data.clean.min_tokens",
        "data.mixture_names",
        "data.mixture_weights",
        "model.moe.capacity_factor",
        "train.loss_scale",
        "dpo.beta",
        "model.attention.n_hashes",
    }
    assert "data.prepare" in keys["data.clean.min_tokens"] and "mesh.expert is 1" in keys["model.moe.capacity_factor"]
    prepared = load_config(None, ["data.kind=arrayrecord", "data.prepared_dir=x", "data.sources=[a.txt]"])
    assert [k for k, _ in ignored_keys(prepared)] == ["data.sources"]
    dpo = load_config(
        None,
        [
            "train.stage=dpo",
            "dpo.init_from=x",
            "model.d_model=32",
            "model.dtype=float16",
            "train.loss_scale=1024",
            "data.max_corpus_mb=1",
        ],
    )
    assert {k for k, _ in ignored_keys(dpo)} == {"model.d_model", "data.max_corpus_mb"}  # dtype is a runtime key


def test_warmup_must_leave_a_decay_step():
    with pytest.raises(ConfigError, match=r"train.warmup_steps \(2\) must be < train.steps \(2\); accepted: 0..1"):
        load_config(None, ["train.steps=2", "train.warmup_steps=2"])
    assert load_config(None, ["train.steps=2", "train.warmup_steps=1"]).train.warmup_steps == 1


def test_disk_tier_refuses_an_adapter_lr_scale(tmp_path):
    overrides = ["train.offload=optimizer", f"train.offload_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"train.adapter_lr_scale=2.0 is not applied .* accepted there: 1.0"):
        load_config(None, [*overrides, "train.adapter_lr_scale=2.0"])
    assert load_config(None, overrides).train.adapter_lr_scale == 1.0


def test_model_section_validates_alone():
    from open_r1_jax.config import model_from_dict

    assert model_from_dict({"d_model": 32, "moe": {"n_experts": 4}}).moe.n_experts == 4
    with pytest.raises(ConfigError, match=r"model.moe.top_k \(5\) must be <= model.moe.n_experts \(4\)"):
        model_from_dict({"moe": {"n_experts": 4, "top_k": 5}})
    with pytest.raises(ConfigError, match="unknown key 'model.d_modle'"):
        model_from_dict({"d_modle": 3})
