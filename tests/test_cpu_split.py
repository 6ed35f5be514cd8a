"""The train CLI's CPU host split (``parallel/mesh.py::split_cpu_host``): when it splits, into how many
devices, and that the mesh, MFU peak and energy then count the host once.

Each case needs a process whose JAX has not started (the device count is fixed at start), so the cases
run in one subprocess, resetting ``jax_num_cpu_devices`` between the decisions that start nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from micro import subprocess_env

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
import jax
from open_r1_jax.config import MeshConfig
from open_r1_jax.parallel.mesh import make_mesh, split_cpu_host
from open_r1_jax.training.metrics import hardware_units

def decide(batch, env=None, **mesh):
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return split_cpu_host(MeshConfig(**mesh), batch)
    finally:
        os.environ.clear(); os.environ.update(old)
        jax.config.update("jax_num_cpu_devices", -1)

out = {
    "four_cpu_devices_batch_6": decide(6, cpu_devices=4),
    "four_cpu_devices_batch_4": decide(4, cpu_devices=4),
    "two_batch_3": decide(3, cpu_devices=2),
    "off": decide(4, cpu_devices=1),
    "mesh_set": decide(4, cpu_devices=2, fsdp=2),
    "flag_set": decide(4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, cpu_devices=2),
    "coordinator": decide(4, {"OPEN_R1_COORDINATOR": "127.0.0.1:1"}, cpu_devices=2),
    "slurm": decide(4, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, cpu_devices=2),
    "per_core": decide(12, cpu_devices=0),
    "default_off": decide(4),
}
out["split"] = split_cpu_host(MeshConfig(cpu_devices=2), 4)
mesh = make_mesh(MeshConfig(cpu_devices=2))
out["devices"] = len(jax.devices())
out["mesh"] = dict(mesh.shape)
out["mesh_off"] = make_mesh(MeshConfig(cpu_devices=1), jax.devices()[:1]).shape["data"]
out["units"] = hardware_units(mesh.devices.flat)
out["after_start"] = split_cpu_host(MeshConfig(cpu_devices=2), 4)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def decisions() -> dict:
    env = subprocess_env()  # no fake device count: the split decides
    env.pop("OPEN_R1_COORDINATOR", None)
    env.pop("SLURM_JOB_ID", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_count_is_the_largest_that_divides_the_batch(decisions):
    assert decisions["four_cpu_devices_batch_6"] == 3
    assert decisions["four_cpu_devices_batch_4"] == 4
    assert decisions["two_batch_3"] == 1
    cores = len(os.sched_getaffinity(0))
    assert decisions["per_core"] == max(d for d in range(1, min(cores, 12) + 1) if 12 % d == 0)


def test_no_split_where_something_else_chose_the_devices(decisions):
    for case in ("default_off", "off", "mesh_set", "flag_set", "coordinator", "slurm"):
        assert decisions[case] == 1, case
    assert decisions["after_start"] == 1  # the count is already fixed


def test_no_split_once_jax_has_started():
    import jax

    from open_r1_jax.config import MeshConfig
    from open_r1_jax.parallel.mesh import split_cpu_host

    jax.devices()  # this test process's backends are up
    assert split_cpu_host(MeshConfig(cpu_devices=2), 4) == 1
    assert jax.config.jax_num_cpu_devices == -1


def test_the_split_host_is_one_data_axis_and_one_hardware_unit(decisions):
    assert decisions["split"] == 2 and decisions["devices"] == 2
    assert decisions["mesh"] == {"data": 2, "fsdp": 1, "expert": 1}
    assert decisions["mesh_off"] == 1
    assert decisions["units"] == 1  # MFU peak and energy: the host, not each of its devices


def _train(tmp_path: Path, name: str, *extra: str) -> tuple[str, list[dict], dict]:
    from micro import MICRO

    run = tmp_path / name
    cmd = [sys.executable, "-m", "open_r1_jax.train", *MICRO, "train.steps=3", "train.eval_every=0", f"run.dir={run}"]
    out = subprocess.run([*cmd, *extra], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return out.stderr, [r for r in records if "loss" in r], json.loads((run / "summary.json").read_text())


def test_train_cli_on_a_split_host_matches_one_device(tmp_path):
    """The same 3 steps with the host split in two (the batch on mesh.data) and on one device: the
    same losses to float rounding (the gradient is summed over the devices in another order), and
    MFU's peak counts the host once."""
    split_log, split, split_summary = _train(tmp_path, "split", "mesh.cpu_devices=2")
    one_log, one, one_summary = _train(tmp_path, "one", "mesh.cpu_devices=1")
    assert "mesh: {'data': 2, 'fsdp': 1, 'expert': 1} over 2 cpu device(s)" in split_log
    assert "mesh: {'data': 1, 'fsdp': 1, 'expert': 1} over 1 cpu device(s)" in one_log
    assert [r["step"] for r in split] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(split, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)
    assert split_summary["peak_flops_used_for_mfu"] == one_summary["peak_flops_used_for_mfu"] == 0.1e12
