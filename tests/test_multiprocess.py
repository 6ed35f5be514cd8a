"""2 processes x 4 CPU devices (launch/local.py, jax.distributed with gloo) against 1 process x 8
devices: the same losses, with each process reading only its share of the data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from micro import MICRO, subprocess_env

ROOT = Path(__file__).parent.parent
ARGS = MICRO + [
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.expert=2",
    "train.global_batch=8",
    "train.steps=3",
    "train.warmup_steps=1",
    "data.shards=2",
    "train.eval_every=0",
    "train.eval_batches=1",
]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    env = subprocess_env()
    single = subprocess.run(
        [sys.executable, "-m", "open_r1_jax.train", *ARGS, f"run.dir={tmp_path / 'single'}"],
        cwd=ROOT,
        env=subprocess_env(devices=8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(
        [
            sys.executable,
            "launch/local.py",
            "--processes",
            "2",
            "--devices-per-process",
            "4",
            "--log-dir",
            str(tmp_path / "logs"),
            "--",
            sys.executable,
            "-m",
            "open_r1_jax.train",
            *ARGS,
            f"run.dir={tmp_path / 'multi'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr[-3000:] + (tmp_path / "logs" / "process_1.log").read_text()[-2000:]
    assert "process 0 of 2" in multi.stderr
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(a) == len(b) == 3
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5, (a, b)


def test_unreachable_coordinator_is_a_clear_error():
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        OPEN_R1_COORDINATOR="127.0.0.1:9",
        OPEN_R1_NUM_PROCESSES="2",
        OPEN_R1_PROCESS_ID="1",
        OPEN_R1_INIT_TIMEOUT="3",
    )
    out = subprocess.run(
        [sys.executable, "-m", "open_r1_jax.train", *MICRO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "could not join coordinator 127.0.0.1:9 (process 1 of 2) within 3s" in out.stderr
