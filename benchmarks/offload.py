"""Train-state offload (``train.offload``): step time and device-resident train-state bytes of each
setting, in one run, on one device.

For each of none / optimizer / optimizer_and_params: the train state created in its shardings (the
moments, and the parameters, in pinned host memory where offloaded), the compiled step
(``training/offload.py``: the update runs on the host beside the moments), and the time
per step on the same batch, the settings alternated for ``--rounds`` (medians). On a CPU both memory
kinds are the same RAM and the host update runs on the same cores, so the time ratio measures the
extra copies only; on a GPU the host-device transfer per step is what it adds (printed: gradients and
parameters to the host and back, 12 or 8 bytes per parameter, with the PCIe time it implies at
``--pcie-gbs``) beside the update on the host's cores. Targets on CPU: device-resident train-state
bytes -60% or more with ``optimizer_and_params``, step time at most 1.3x of no offload.

    python benchmarks/offload.py [--config configs/small_cpu.yaml] [--steps 3] [--rounds 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, one_batch  # noqa: E402

from open_r1_jax.config import load_config, replace  # noqa: E402
from open_r1_jax.parallel.mesh import batch_sharding, make_mesh, replicated  # noqa: E402
from open_r1_jax.training.disk_offload import DiskMoments  # noqa: E402
from open_r1_jax.training.offload import OFFLOADED, resident_bytes  # noqa: E402
from open_r1_jax.training.optim import make_optimizer  # noqa: E402
from open_r1_jax.training.stages import Pretrain  # noqa: E402
from open_r1_jax.training.state import create_train_state  # noqa: E402
from open_r1_jax.training.step import make_train_step  # noqa: E402

MODES = tuple(OFFLOADED)


class Setting:
    """One offload setting's train state and compiled step; with ``train.offload_dir`` the moments
    are on disk and each step is followed by the streamed update (training/disk_offload.py)."""

    def __init__(self, cfg, batch):
        mesh = make_mesh(cfg.mesh)
        tx = make_optimizer(cfg.train)
        graphdef, self.state, sh = create_train_state(cfg, tx, mesh)
        self.disk = None
        if cfg.train.offload_dir:
            self.disk = DiskMoments(tx, cfg.train, self.state["params"])
            self.disk.init(self.state["params"])
            sh = {**sh, "opt_state": ()}
        self.device_bytes, self.host_bytes = resident_bytes(self.state)
        self.param_bytes = sum(resident_bytes({"p": self.state["params"]}))
        if self.disk:  # each step reads and writes every moment
            self.moved = 2 * self.disk.n_bytes
        else:  # optimizer: gradients and parameters to the host, parameters back (12 bytes a parameter);
            # optimizer_and_params: parameters to the device, gradients to the host (8)
            self.moved = {"none": 0, "optimizer": 3, "optimizer_and_params": 2}[cfg.train.offload] * self.param_bytes
        step = make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg)
        self.batch = jax.device_put(batch, batch_sharding(mesh))
        out = (sh, replicated(mesh)) + ((sh["params"],) if self.disk else ())
        self.step = jax.jit(step, donate_argnums=0, in_shardings=(sh, batch_sharding(mesh)), out_shardings=out)
        self.step = self.step.lower(self.state, self.batch).compile()
        self.update_s: list[float] = []  # the streamed update's share of each step (disk only)
        self.run(1)  # warm-up

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            if self.disk is None:
                self.state, m = self.step(self.state, self.batch)
                continue
            self.state, m, grads = self.step(self.state, self.batch)
            jax.block_until_ready(grads)
            t1 = time.perf_counter()
            self.state = {**self.state, "params": self.disk.update(grads, self.state["params"], m["finite"])}
            jax.block_until_ready(self.state["params"])
            self.update_s.append(time.perf_counter() - t1)
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/small_cpu.yaml")
    ap.add_argument("--steps", type=int, default=3, help="steps per timing")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pcie-gbs", type=float, default=25.0, help="host-device bandwidth for the GPU estimate")
    ap.add_argument("--offload-dir", default=None, help="where the disk tier's moments go (default: the temp dir)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    batch = one_batch(cfg)
    settings = {m: Setting(replace(cfg, **{"train.offload": m}), batch) for m in MODES}
    with tempfile.TemporaryDirectory(dir=args.offload_dir) as d:
        disk_cfg = replace(cfg, **{"train.offload": "optimizer", "train.offload_dir": d})
        settings["optimizer on disk"] = Setting(disk_cfg, batch)
        return report(args, cfg, batch, settings)


def report(args, cfg, batch, settings) -> None:
    times: dict[str, list[float]] = {m: [] for m in settings}
    for _ in range(args.rounds):
        for m, s in settings.items():
            times[m].append(s.run(args.steps))
    base = settings["none"]
    step_s = {m: statistics.median(t) for m, t in times.items()}
    print(f"{args.config}: train state per device, step time (median of {args.rounds} rounds x {args.steps} steps)")
    print(
        f"{'offload':<22} {'device MB':>10} {'host MB':>9} {'device vs none':>15} {'step s':>8} {'vs none':>8} "
        f"{'moved/step MB':>14} {'PCIe s':>7}"
    )
    rows = {}
    for m, s in settings.items():
        moved = s.moved
        rows[m] = {
            "device_bytes": s.device_bytes,
            "host_bytes": s.host_bytes,
            "device_fraction": s.device_bytes / base.device_bytes,
            "step_s": step_s[m],
            "step_ratio": step_s[m] / step_s["none"],
            "moved_bytes_per_step": moved,
            "pcie_s_per_step": moved / (args.pcie_gbs * 1e9),
        }
        r = rows[m]
        if s.disk is not None:
            update_s = statistics.median(s.update_s)
            r.update(disk_bytes=s.disk.n_bytes, update_s=update_s, disk_gbs=s.moved / update_s / 1e9)
        print(
            f"{m:<22} {s.device_bytes / 1e6:>10.1f} {s.host_bytes / 1e6:>9.1f} {r['device_fraction'] - 1:>+14.0%} "
            f"{r['step_s']:>8.3f} {r['step_ratio']:>7.2f}x {moved / 1e6:>14.1f} {r['pcie_s_per_step']:>7.4f}"
        )
    disk = settings["optimizer on disk"]
    r = rows["optimizer on disk"]
    print(
        f"on disk: {disk.disk.n_bytes / 1e6:.1f} MB of moments in {len(disk.disk.groups)} groups; the streamed update "
        f"takes {r['update_s']:.3f} s of the {r['step_s']:.3f} s step (reads and writes {disk.moved / 1e6:.1f} MB: "
        f"{r['disk_gbs']:.2f} GB/s with the update's compute)"
    )
    emit(
        "offload", {"config": args.config, "rows": rows, "tokens_per_step": int(np.count_nonzero(batch["segment_ids"]))}
    )


if __name__ == "__main__":
    main()
