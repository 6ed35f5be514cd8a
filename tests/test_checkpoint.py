"""Checkpoints: exact resume after SIGKILL, crash during an async save, restore onto other meshes,
params-only restore, architecture mismatch, and the refusal to save a non-finite state.

The kill tests run ``python -m open_r1_jax.train`` in a subprocess with the micro config made slower
per step (a 16k vocabulary, 8 micro-batches of 4): steps of ~0.1 s leave a window of about a second
between the checkpoint at step 10 and the end of the run, and the 12 MB state keeps a save in flight
for tens of milliseconds. The state of the straight run is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from micro import MICRO, subprocess_env

from open_r1_jax.checkpoint import Checkpointer, CheckpointMismatch, NonFiniteState, abstract, open_checkpoint
from open_r1_jax.config import to_dict
from open_r1_jax.model import build_model, split_model
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.step import init_state

ROOT = Path(__file__).resolve().parents[1]
SLOW = [
    "model.vocab_size=16384",
    "train.global_batch=32",
    "train.micro_batch=4",
    "train.steps=20",
    "train.eval_every=0",
    "train.eval_batches=1",
]
TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def _cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "open_r1_jax.train", *MICRO, *SLOW, f"run.dir={run}", *extra]


def _run(env: dict, run: Path, *extra: str) -> str:
    out = subprocess.run(_cmd(run, *extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _run_and_kill(env: dict, run: Path, extra: tuple, ready) -> int:
    """Start training, poll its checkpoint directory every ms, SIGKILL it when ``ready(names)`` is true."""
    proc = subprocess.Popen(_cmd(run, *extra), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints"
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            names = os.listdir(ckpts) if ckpts.is_dir() else []
            if ready(names):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        rc = proc.wait(timeout=60)
    return rc


def _records(run: Path) -> dict[int, dict]:
    """step -> record; a step logged twice (before the kill and after the resume) keeps the later line."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


def _params(run: Path, step: int) -> dict:
    ckpt, step = open_checkpoint(run, step)
    try:
        return ckpt.restore_params(step)
    finally:
        ckpt.close()


def _assert_same_tree(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_same_continuation(straight: Path, resumed: Path, first: int) -> None:
    s, r = _records(straight), _records(resumed)
    assert sorted(r) == list(range(1, 21))
    for step in range(first, 21):
        assert (s[step]["loss"], s[step]["grad_norm"], s[step]["aux_loss"]) == (
            r[step]["loss"],
            r[step]["grad_norm"],
            r[step]["aux_loss"],
        ), step
    _assert_same_tree(_params(straight, 20), _params(resumed, 20))


@pytest.fixture(scope="module")
def env() -> dict:
    """One CPU device and the suite's compilation cache (the second run of the same command skips
    compilation; a cached executable computes the same bits)."""
    return subprocess_env()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    _run(env, run, "train.checkpoint_every=10")
    return run


def test_sigkill_after_checkpoint_resumes_exactly(straight, env, tmp_path):
    """20 steps straight == 10 steps, SIGKILL, same command again: losses 11-20 and final params bitwise."""
    run = tmp_path / "run"
    rc = _run_and_kill(env, run, ("train.checkpoint_every=10",), lambda names: "10" in names)
    assert rc == -signal.SIGKILL
    assert sorted(n for n in os.listdir(run / "checkpoints") if n.isdigit()) == ["10"], (
        "the run ended before the kill: steps are too fast on this machine"
    )
    log = _run(env, run, "train.checkpoint_every=10")
    assert re.search(r"resumed from \S+/checkpoints/10 at step 10", log)
    _assert_same_continuation(straight, run, 11)


def test_kill_during_async_save_restores_previous_checkpoint(straight, env, tmp_path):
    """SIGKILL while a save is in flight: the next start cleans the partial save, resumes from the last
    complete one, and still reproduces the straight run."""
    run = tmp_path / "run"
    extra = ("train.checkpoint_every=5",)

    def saving(names):  # a save after the first complete checkpoint is being written
        return any(n.isdigit() for n in names) and any(TMP.match(n) and int(TMP.match(n)[1]) >= 10 for n in names)

    rc = _run_and_kill(env, run, extra, saving)
    assert rc == -signal.SIGKILL
    ckpts = run / "checkpoints"
    partial = [n for n in os.listdir(ckpts) if TMP.match(n)]
    complete = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
    if not partial:  # the save finished between the poll and the kill: leave a partial save by hand
        print("kill landed after the save completed; simulating the partial save")
        last = complete[-1]
        shutil.copytree(ckpts / str(last), ckpts / f"{last + 5}.orbax-checkpoint-tmp")
        (ckpts / f"{last + 5}.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
        partial = [f"{last + 5}.orbax-checkpoint-tmp"]
    assert complete and int(TMP.match(partial[0])[1]) > complete[-1]
    log = _run(env, run, *extra)
    assert re.search(rf"resumed from \S+/checkpoints/{complete[-1]} at step {complete[-1]}", log)
    assert not [n for n in os.listdir(ckpts) if TMP.match(n)]
    assert sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) == [10, 15, 20]  # keep_checkpoints=3
    _assert_same_continuation(straight, run, complete[-1] + 1)


def test_resume_with_another_micro_batch(straight, tmp_path, micro):
    from open_r1_jax.training.trainer import train

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "checkpoints" / "20")
    train(micro(*SLOW, "train.micro_batch=8", "train.checkpoint_every=10", "train.steps=11", run_dir=run))
    s, r = _records(straight), _records(run)
    # same restored parameters and data position; only the accumulation's summation order differs
    np.testing.assert_allclose(r[11]["loss"], s[11]["loss"], rtol=1e-6)
    ckpt = Checkpointer(run / "checkpoints", read_only=True)
    assert ckpt.all_steps() == [10, 11] and ckpt.config(11)["train"]["micro_batch"] == 8
    ckpt.close()


# ----------------------------------------------------------------------------- in-process checkpoints


def _state(cfg, seed=0):
    """A train state whose every float leaf is random (optimizer moments included)."""
    _, params, model_state = split_model(build_model(cfg.model, 0))
    state = init_state(params, model_state, make_optimizer(cfg.train), cfg)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (
            jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x
        ),
        state,
    )


def test_params_only_restore_reads_no_optimizer_state(micro, tmp_path):
    cfg = micro("model.moe.router=sigmoid")
    state = _state(cfg)
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(3, state, config=to_dict(cfg))
    shutil.rmtree(tmp_path / "ck" / "3" / "optimizer")  # nothing may read it
    shutil.rmtree(tmp_path / "ck" / "3" / "train")
    ckpt = Checkpointer(tmp_path / "ck", read_only=True)
    got = ckpt.restore_params()
    _assert_same_tree(got, {"params": state["params"], "model_state": state["model_state"]})
    ckpt.close()


def test_restore_into_another_architecture_names_the_paths(micro, tmp_path):
    cfg = micro()
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, _state(cfg), config=to_dict(cfg))
        other = micro("model.moe.n_experts=8", "model.n_layers=3")
        with pytest.raises(CheckpointMismatch) as info:
            ckpt.restore(1, abstract(_state(other)))
    msg = str(info.value)
    assert "params/blocks/1/ffn/experts/w_gate: checkpoint (4, 32, 32) vs model (8, 32, 32)" in msg
    assert "params/blocks/2/attn/wq: in the model (32, 32), not in the checkpoint" in msg


def test_nonfinite_state_is_never_saved(micro, tmp_path):
    cfg = micro()
    state = _state(cfg)
    state["nonfinite_step"] = jnp.asarray(6, jnp.int32)
    with Checkpointer(tmp_path / "ck") as ckpt:
        with pytest.raises(NonFiniteState, match="non-finite at step 7"):
            ckpt.save(7, state, config=to_dict(cfg))
        assert ckpt.all_steps() == []


def test_resharding_restore_on_eight_devices(tmp_path):
    """Saved on 8 CPU devices (fsdp=8): restores onto (data=2, expert=4) and onto one device, same values."""
    code = f"""
import jax, jax.numpy as jnp, numpy as np, sys
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_checkpoint import MICRO, _state
from open_r1_jax.checkpoint import Checkpointer, abstract
from open_r1_jax.config import load_config, to_dict

assert jax.device_count() == 8
devs = np.array(jax.devices())

def place(tree, mesh, axis):
    n = mesh.shape[axis]
    def one(x):
        dims = [d for d, s in enumerate(x.shape) if s % n == 0 and s >= n]
        spec = [None] * x.ndim
        if dims and x.size >= 64:
            spec[dims[0]] = axis
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))
    return jax.tree.map(one, tree)

cfg = load_config(None, MICRO + ["model.moe.router=sigmoid"])
host = _state(cfg)
fsdp = Mesh(devs.reshape(1, 8, 1), ("data", "fsdp", "expert"))
state = place(host, fsdp, "fsdp")
assert state["params"]["embed"].sharding.spec == P("fsdp", None)
with Checkpointer({str(tmp_path / "ck")!r}) as ckpt:
    ckpt.save(5, state, config=to_dict(cfg))

def same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

ckpt = Checkpointer({str(tmp_path / "ck")!r}, read_only=True)
de = Mesh(devs.reshape(2, 1, 4), ("data", "fsdp", "expert"))
target = abstract(place(host, de, "expert"))
got = ckpt.restore(5, target)
same(got, host)
for g, t in zip(jax.tree.leaves(got), jax.tree.leaves(target)):
    assert g.sharding == t.sharding
assert got["params"]["blocks"][1]["ffn"]["experts"]["w_up"].sharding.spec[0] == "expert"
one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SingleDeviceSharding(devs[3])), host)
got = ckpt.restore(5, one)
same(got, host)
assert all(x.sharding == SingleDeviceSharding(devs[3]) for x in jax.tree.leaves(got))
same(ckpt.restore_params(5), {{"params": host["params"], "model_state": host["model_state"]}})
ckpt.close()
print("resharding ok")
"""
    env = subprocess_env(devices=8)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "resharding ok" in out.stdout, out.stderr[-3000:]
