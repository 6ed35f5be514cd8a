"""The train step with the CPU host split into N XLA devices (data parallel) against one device, side
by side in one run (issue: step speed on CPU).

XLA:CPU runs most elementwise fusions on one thread; a host split into one device per core
(``--xla_force_host_platform_device_count``) with the batch on a ``mesh.data`` axis runs the
devices' programs side by side. Each setting runs in a process of its own (the device count is
fixed when JAX starts), the processes alternate for ``--rounds`` rounds, and each row is the median
of its timings. The state is placed as the Trainer places it (``create_train_state``).

    python benchmarks/cpu_devices.py [--config configs/baby_gpt.yaml] [--devices 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def worker(n: int, path: str, repeats: int, steps: int) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"  # before JAX starts
    sys.path.insert(0, str(Path(__file__).parent))
    from common import JaxStep, one_batch

    from open_r1_jax.config import load_config
    from open_r1_jax.parallel.mesh import make_mesh

    cfg = load_config(path, [f"mesh.data={n}"])
    r = JaxStep(cfg, one_batch(cfg), mesh=make_mesh(cfg.mesh))
    return {"times": [r.run(steps) for _ in range(repeats)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/baby_gpt.yaml")
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.config, args.repeats, args.steps)))
        return
    times: dict[int, list[float]] = {n: [] for n in args.devices}
    for _ in range(args.rounds):
        for n in args.devices:
            cmd = [sys.executable, __file__, "--worker", str(n), "--config", args.config]
            cmd += ["--repeats", str(args.repeats), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[n] += json.loads(out.stdout.strip().splitlines()[-1])["times"]
    base = statistics.median(times[args.devices[0]])
    print(f"{args.config} on {os.cpu_count()} cores")
    print(f"  {'devices':>7} {'ms/step':>8} {'speedup':>8}")
    for n, t in times.items():
        print(f"  {n:>7} {statistics.median(t) * 1e3:>8.1f} {base / statistics.median(t):>7.2f}x")


if __name__ == "__main__":
    main()
