"""DPO: preference data (reading, errors, truncation), losses, and a short stage run end to end."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from open_r1_jax.config import ConfigError, DPOConfig, load_config
from open_r1_jax.data.preference import Pair, PairReport, PreferenceDataError, demo_pairs, encode_pairs, read_pairs
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.training.stages.dpo import dpo_loss
from open_r1_jax.training.trainer import train


def test_reads_prompt_or_query_and_reports_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"query": "q", "chosen": "x", "rejected": "y"}\n'
        'oops\n{"prompt": "a", "chosen": 1, "rejected": "c"}\n'
    )
    report = PairReport()
    pairs = read_pairs(f, max_bad_fraction=0.5, report=report)
    assert [p.prompt for p in pairs] == ["a", "q"]
    assert report.bad[0].startswith(f"{f}:3: not valid JSON") and report.bad[1].startswith(f"{f}:4: needs string")
    with pytest.raises(PreferenceDataError, match=r"2 of 4 lines are malformed"):
        read_pairs(f, max_bad_fraction=0.1, report=PairReport())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pairs(tmp_path / "none.jsonl", 0.1, PairReport())


def test_encoding_masks_only_the_response_and_counts_truncation():
    cfg = DPOConfig(max_prompt_len=4, max_len=10)
    report = PairReport()
    arr = encode_pairs([Pair("abcdefg", "XY", "Z" * 20)], ByteTokenizer(), cfg, report)
    assert report.prompt_truncated == 1 and report.response_truncated == 1
    tok = ByteTokenizer()
    # prompt keeps its last 4 bytes "defg"; the chosen targets that count are "X", "Y", EOS
    assert list(arr["chosen_inputs"][0, :6]) == list(tok.encode("defgXY"))
    assert list(arr["chosen_targets"][0][arr["chosen_mask"][0] == 1]) == list(tok.encode("XY")) + [tok.eos_id]
    assert arr["rejected_mask"][0].sum() == 10 - 3  # cut at max_len


def test_demo_pairs_are_deterministic_and_split():
    a, b = demo_pairs(False, 20, seed=0, max_corpus_mb=1), demo_pairs(False, 20, seed=0, max_corpus_mb=1)
    assert [(p.prompt, p.chosen, p.rejected) for p in a] == [(p.prompt, p.chosen, p.rejected) for p in b]
    assert all(p.chosen != p.rejected and len(p.chosen) == len(p.rejected) for p in a)
    held = demo_pairs(True, 5, seed=0, max_corpus_mb=1)
    assert {p.prompt for p in held}.isdisjoint({p.prompt for p in a})


def test_loss_values():
    z = jnp.zeros(3)
    pc = jnp.array([1.0, 0.0, -2.0])
    for loss, at_zero in [("sigmoid", np.log(2)), ("hinge", 1.0), ("ipo", (1 / (2 * 0.1)) ** 2)]:
        losses, _ = dpo_loss(z, z, z, z, DPOConfig(loss=loss), jnp.ones(3), jnp.ones(3))
        np.testing.assert_allclose(losses, at_zero, rtol=1e-6)
    losses, m = dpo_loss(pc, z, z, z, DPOConfig(beta=0.5))
    np.testing.assert_allclose(losses, np.log1p(np.exp(-0.5 * np.array([1.0, 0.0, -2.0]))), rtol=1e-6)
    assert float(m["rewards/accuracies"]) == pytest.approx(1 / 3) and float(m["rewards/chosen"]) == pytest.approx(
        -0.5 / 3
    )
    smooth, _ = dpo_loss(pc, z, z, z, DPOConfig(beta=0.5, label_smoothing=0.1))
    assert float(smooth[0]) > float(losses[0])


def test_stage_requires_init_from():
    with pytest.raises(ConfigError, match="dpo.init_from: required"):
        load_config(None, ["train.stage=dpo"])


def test_dpo_stage_end_to_end(micro, tmp_path):
    pre = tmp_path / "pre"
    train(micro("train.steps=4", run_dir=pre))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"x = {i}\n", "chosen": f"y = {i + 1}\n", "rejected": f"y = {i}#\n"} for i in range(24)]
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = micro(
        "train.stage=dpo",
        f"dpo.init_from={pre}",
        f"dpo.train_path={pairs}",
        f"dpo.eval_path={pairs}",
        "dpo.max_prompt_len=8",
        "dpo.max_len=24",
        "train.steps=6",
        "train.eval_every=3",
        "train.global_batch=4",
        "train.lr=1e-3",
        run_dir=tmp_path / "dpo",
    )
    summary = train(cfg)
    records = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["eval_rewards/accuracies"] == 0.0  # policy == reference
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ):
        assert key in records[-1] and f"eval_{key}" in records[-1]
    assert summary["eval_rewards/margins"] > 0 and summary["eval_before"]["eval_rewards/margins"] == 0.0
    assert sorted(p.name for p in (tmp_path / "dpo" / "checkpoints").iterdir() if p.name.isdigit()) == ["6"]


def _dpo_setup(micro, *overrides):
    """-> (cfg, stage, jitted step, initial state, a batch of 4 pairs with precomputed reference log-probs)."""
    import jax

    from open_r1_jax.data.preference import encode_pairs
    from open_r1_jax.model import build_model, split_model
    from open_r1_jax.training.optim import make_optimizer
    from open_r1_jax.training.stages import DPO
    from open_r1_jax.training.step import init_state, make_train_step

    cfg = micro(
        "train.stage=dpo",
        "dpo.init_from=unused",
        "dpo.max_prompt_len=8",
        "dpo.max_len=24",
        "model.moe.balance_coef=0",
        "model.moe.z_loss_coef=0",
        "train.global_batch=4",
        "train.warmup_steps=0",
        *overrides,
    )
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    tx = make_optimizer(cfg.train)
    pairs = [Pair(f"x = {i}\n", f"y = {i + 1}\n", f"y = {i}#{'z' * i}\n") for i in range(4)]
    batch = encode_pairs(pairs, ByteTokenizer(), cfg.dpo, PairReport())
    batch["ref_chosen"] = np.linspace(-30, -20, 4).astype(np.float32)
    batch["ref_rejected"] = np.linspace(-25, -35, 4).astype(np.float32)
    stage = DPO(cfg).bind(graphdef)
    step = jax.jit(make_train_step(stage, tx, cfg, return_grads=True))
    return cfg, stage, step, init_state(params, model_state, tx, cfg), {k: jnp.asarray(v) for k, v in batch.items()}


def test_dpo_micro_batches_give_the_same_gradient(micro):
    """train.micro_batch is exact for DPO: 1 micro-batch vs 2 give the same loss, metrics and accumulated
    gradient of every parameter (fp32, 1e-6 relative). The parameters after AdamW are not compared: its
    first update is about lr * sign(g), so near-zero gradient entries flip on float noise."""
    import jax

    _, _, step1, state, batch = _dpo_setup(micro)
    _, _, step2, _, _ = _dpo_setup(micro, "train.micro_batch=2")
    _, m1 = step1(jax.tree.map(jnp.copy, state), batch)
    _, m2 = step2(jax.tree.map(jnp.copy, state), batch)
    for key in ("loss", "grad_norm", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(m1["grads"]), jax.tree.leaves(m2["grads"])):
        assert np.linalg.norm(np.asarray(a) - np.asarray(b)) <= 1e-6 * np.linalg.norm(np.asarray(a))


def test_dpo_float16_overflow_is_skipped_and_counted(micro):
    import jax

    _, _, step, state, batch = _dpo_setup(micro, "model.dtype=float16", "train.loss_scale=1e38")
    new, m = step(state, batch)
    assert not bool(m["finite"]) and int(new["skipped"]) == 1 and int(new["nonfinite_step"]) == -1
    assert float(new["loss_scale"]) == pytest.approx(5e37)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
