"""The train step (accumulation, clipping, loss scaling, router bias, NaN guard) and the loop end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from open_r1_jax.model import build_model, split_model
from open_r1_jax.training import state as state_lib
from open_r1_jax.training.optim import decay_mask, make_optimizer, schedule
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.step import init_state, make_train_step
from open_r1_jax.training.trainer import TrainingDiverged, train


def _batch(cfg, seed=0):
    b, t = cfg.train.global_batch, cfg.train.seq_len
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[0, t // 2 :] = 2  # a packed row
    seg[1, -5:] = 0  # padding
    pos = np.where(seg == 2, np.arange(t) - t // 2, np.arange(t)).astype(np.int32)
    return {"inputs": tok[:, :-1], "targets": tok[:, 1:], "positions": pos, "segment_ids": seg}


def _setup(cfg):
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    tx = make_optimizer(cfg.train)
    return graphdef, tx, init_state(params, model_state, tx, cfg)


def _run(cfg, state, graphdef, tx, batch):
    step = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg))
    return step(state, {k: jnp.asarray(v) for k, v in batch.items()})


def test_exact_accumulation_equals_one_big_batch(micro):
    common = ("model.moe.balance_coef=0", "model.moe.z_loss_coef=0", "train.global_batch=8")
    full, acc = micro(*common), micro(*common, "train.micro_batch=2")
    graphdef, tx, state = _setup(full)
    batch = _batch(full)
    s1, m1 = _run(full, state, graphdef, tx, batch)
    s4, m4 = _run(acc, jax.tree.map(jnp.copy, state), graphdef, tx, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    np.testing.assert_array_equal(m1["expert_counts"], m4["expert_counts"])
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_schedule_and_decay_mask(micro):
    cfg = micro("train.steps=100", "train.warmup_steps=10", "train.lr=1e-3", "train.min_lr=1e-5")
    lr = schedule(cfg.train)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1e-3) < 1e-9 and abs(float(lr(100)) - 1e-5) < 1e-9
    assert float(lr(55)) < float(lr(20))
    _, params, _ = split_model(build_model(cfg.model))
    mask = decay_mask(params)
    assert mask["embed"] and mask["blocks"][0]["attn"]["wq"]
    assert not mask["final_norm"]["scale"] and not mask["blocks"][1]["ffn_norm"]["scale"]


def test_sigmoid_router_bias_moves_toward_balance(micro):
    cfg = micro("model.moe.router=sigmoid", "model.moe.bias_update_rate=0.01")
    graphdef, tx, state = _setup(cfg)
    new, m = _run(cfg, state, graphdef, tx, _batch(cfg))
    counts = np.asarray(m["expert_counts"][0])
    bias = np.asarray(new["model_state"]["blocks"][1]["ffn"]["router_bias"])
    np.testing.assert_allclose(bias, 0.01 * np.sign(counts.mean() - counts))
    assert counts.sum() == np.count_nonzero(_batch(cfg)["segment_ids"]) * cfg.model.moe.top_k


def test_nonfinite_step_is_skipped_and_recorded(micro):
    cfg = micro()
    graphdef, tx, state = _setup(cfg)
    state["params"]["embed"] = state["params"]["embed"].at[3].set(jnp.nan)
    batch = _batch(cfg)
    batch["inputs"][0, 0] = 3
    new, m = _run(cfg, state, graphdef, tx, batch)
    assert not bool(m["finite"]) and int(new["nonfinite_step"]) == 0 and int(new["skipped"]) == 1
    np.testing.assert_array_equal(new["params"]["blocks"][0]["attn"]["wq"], state["params"]["blocks"][0]["attn"]["wq"])


def test_float16_loss_scale_skips_overflow_and_halves(micro):
    cfg = micro("model.dtype=float16", "train.loss_scale=1e38")
    graphdef, tx, state = _setup(cfg)
    new, m = _run(cfg, state, graphdef, tx, _batch(cfg))
    assert not bool(m["finite"]) and int(new["skipped"]) == 1
    assert float(new["loss_scale"]) == pytest.approx(5e37) and int(new["nonfinite_step"]) == -1
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    cfg2 = micro("model.dtype=float16", "train.loss_scale=1024", "train.loss_scale_period=1")
    new2, m2 = _run(cfg2, init_state(state["params"], state["model_state"], tx, cfg2), graphdef, tx, _batch(cfg2))
    assert bool(m2["finite"]) and float(new2["loss_scale"]) == 2048.0 and np.isfinite(float(m2["loss"]))


def test_train_end_to_end_writes_outputs_and_resumes(micro, tmp_path):
    run = tmp_path / "run"
    cfg = micro(
        "train.steps=12",
        "train.checkpoint_every=6",
        "train.eval_every=6",
        "run.tensorboard=true",
        "train.lr=3e-3",
        run_dir=run,
    )
    summary = train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "expert_load_max_over_mean"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[-1]["loss"] < records[0]["loss"]
    assert {"eval_loss", "eval_ppl", "eval_bits_per_byte"} <= set(records[5]) and "eval_loss" in records[-1]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 12
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "6"]
    assert list((run / "tensorboard").iterdir())
    for key in ("tokens_seen", "wall_seconds", "peak_memory_bytes", "energy_kwh", "co2_kg", "eval_loss"):
        assert key in summary
    # same command with more steps: resumes at 12 and continues to 14
    more = micro("train.steps=14", "train.checkpoint_every=6", "train.eval_every=6", "train.lr=3e-3", run_dir=run)
    train(more)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-2:] == [13, 14]


def test_resume_continues_exactly(micro, tmp_path):
    """8 steps with a checkpoint at 4; drop everything after step 4 and rerun: steps 5-8 are identical."""
    import shutil

    run = tmp_path / "run"
    cfg = micro("train.steps=8", "train.checkpoint_every=4", "train.eval_every=0", "train.lr=3e-3", run_dir=run)
    first = train(cfg)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    straight = [json.loads(x) for x in lines]
    shutil.rmtree(run / "checkpoints" / "8")  # as if the process died after the step-4 checkpoint
    (run / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    again = train(cfg)
    resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(straight[4:], resumed[4:]):
        assert (a["loss"], a["grad_norm"], a["aux_loss"]) == (b["loss"], b["grad_norm"], b["aux_loss"])
    # the counters go on from the checkpoint: the same tokens as the straight run, more seconds than step 4's
    assert (
        again["tokens_seen"] == first["tokens_seen"] == sum(np.count_nonzero(b["segment_ids"]) for b in _stream(cfg, 8))
    )
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == first["tokens_seen"]
    assert again["wall_seconds"] > first["wall_seconds"] * 0.5 and again["train_seconds"] > 0


def _stream(cfg, n):
    """The first ``n`` training batches of ``cfg`` (what the Trainer's pretraining stage reads)."""
    import tempfile

    from open_r1_jax.data.text import build_text_data

    with tempfile.TemporaryDirectory() as d:
        it = build_text_data(cfg, __import__("pathlib").Path(d)).train_iter
        return [next(it) for _ in range(n)]


def test_a_stage_can_freeze_parameters(micro):
    """A stage's trainable mask: frozen parameters keep their values and get no optimizer moments."""
    from open_r1_jax.training.stages import Pretrain

    class FrozenEmbeddings(Pretrain):
        def trainable(self, params):
            return {k: jax.tree.map(lambda _: k != "embed", v) for k, v in params.items()}

    cfg = micro("train.warmup_steps=0")
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    stage = FrozenEmbeddings(cfg).bind(graphdef)
    tx = make_optimizer(cfg.train, stage.trainable)
    state = init_state(params, model_state, tx, cfg)
    new, m = jax.jit(make_train_step(stage, tx, cfg, return_grads=True))(
        state, {k: jnp.asarray(v) for k, v in _batch(cfg).items()}
    )
    np.testing.assert_array_equal(new["params"]["embed"], params["embed"])
    assert not np.allclose(new["params"]["lm_head"], params["lm_head"])
    moments = [x for x in jax.tree.leaves(new["opt_state"]) if getattr(x, "shape", ()) == params["embed"].shape]
    assert not moments, "a frozen parameter must not have optimizer moments"
    # the gradient that is clipped and logged leaves frozen parameters out
    assert not np.any(m["grads"]["embed"]) and np.any(m["grads"]["lm_head"])


def test_nan_stops_the_run_without_a_checkpoint(micro, tmp_path, monkeypatch):
    real = state_lib.build_model

    def poisoned(cfg, seed=0, expert_parallel=1):
        model = real(cfg, seed, expert_parallel)
        model.embed[...] = jnp.full_like(model.embed[...], jnp.nan)
        return model

    monkeypatch.setattr(state_lib, "build_model", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="non-finite at step 1"):
        train(micro("train.checkpoint_every=1", run_dir=run))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]


def test_no_heldout_data_trains_without_evaluation(micro, tmp_path):
    """data.heldout_percent 0 and no data.eval_sources: nothing is held out, so nothing is evaluated
    (the run used to fail at its first evaluation, after the training steps)."""
    summary = train(micro("data.heldout_percent=0", "train.steps=2", "train.warmup_steps=1", run_dir=tmp_path / "run"))
    assert summary["steps"] == 2 and "eval_loss" not in summary
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


def test_train_seconds_count_the_steps_run_not_their_dispatch(micro, tmp_path):
    """train_seconds covers the steps' execution: at least 0.7 x 12 x the time of the same step timed
    here, blocking on each. (The timer once stopped before the asynchronously dispatched steps had
    run: a 167 s quickstart reported 4.9 train seconds and 248K tokens/s.)"""
    import time

    shape = ("model.d_model=128", "train.global_batch=32", "train.seq_len=64", "train.warmup_steps=1")
    cfg = micro(*shape, "train.steps=12", "train.log_every=12", "train.eval_every=0", run_dir=tmp_path / "run")
    summary = train(cfg)
    graphdef, tx, state = _setup(cfg)
    step = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg))
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg).items()}
    state, m = jax.block_until_ready(step(state, batch))
    t0 = time.perf_counter()
    for _ in range(5):
        state, m = jax.block_until_ready(step(state, batch))
    per_step = (time.perf_counter() - t0) / 5
    assert summary["train_seconds"] >= 0.7 * 12 * per_step, (summary["train_seconds"], per_step)
