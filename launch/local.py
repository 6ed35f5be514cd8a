"""Start N processes of a command on this machine, joined by ``jax.distributed`` (CPU collectives).

    python launch/local.py --processes 2 --devices-per-process 4 -- \
        python -m open_r1_jax.train --config configs/tiny.yaml mesh.data=8

Each process gets ``OPEN_R1_COORDINATOR``, ``OPEN_R1_NUM_PROCESSES``, ``OPEN_R1_PROCESS_ID`` and, on
CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=K``. Process 0's output is shown; the others'
goes to ``<log-dir>/process_<i>.log``. If one process fails, the others are stopped and the exit
status is the first failure's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(flags: str, devices: int | None) -> str:
    """``XLA_FLAGS`` with the fake host device count set to ``devices`` (None: removed); the other
    flags stay."""
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join(kept + ([f"{DEVICE_COUNT_FLAG}={devices}"] if devices is not None else []))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--devices-per-process", type=int, default=0, help="fake CPU devices per process (0 = real devices)"
    )
    ap.add_argument("--log-dir", default="runs/launch_logs")
    ap.add_argument("--timeout", type=int, default=60, help="seconds to wait for the coordinator")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given (put it after --)")
    port = free_port()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(args.processes):
        env = dict(
            os.environ,
            OPEN_R1_COORDINATOR=f"127.0.0.1:{port}",
            OPEN_R1_NUM_PROCESSES=str(args.processes),
            OPEN_R1_PROCESS_ID=str(i),
            OPEN_R1_INIT_TIMEOUT=str(args.timeout),
        )
        if args.devices_per_process:
            env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), args.devices_per_process)
            env["JAX_PLATFORMS"] = "cpu"
        out = None if i == 0 else open(log_dir / f"process_{i}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    status = 0
    while procs:
        for p in list(procs):
            rc = p.poll()
            if rc is None:
                continue
            procs.remove(p)
            if rc and not status:
                status = rc
                for q in procs:
                    q.terminate()
        time.sleep(0.2)
    return status


if __name__ == "__main__":
    sys.exit(main())
