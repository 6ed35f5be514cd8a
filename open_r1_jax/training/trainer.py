"""The one Trainer of every stage: mesh, sharded state, jitted step, cadence, resume, logs, summary.

``train(cfg)`` is importable and returns the run summary; ``python -m open_r1_jax.train`` is a thin
CLI over it. ``train.stage`` picks the stage (``training/stages/``): what differs between stages
(data, loss, evaluation, trainable parameters) lives there, everything else here. Running the same
config again with the same ``run.dir`` resumes from the latest checkpoint: train state, the data
iterator where it stopped, and the counters (tokens seen, train and wall seconds).

Outputs in ``run.dir``: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per log step),
``tensorboard/``, ``checkpoints/<step>/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from open_r1_jax import config as config_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import Config
from open_r1_jax.config.checks import ignored_keys
from open_r1_jax.data.pipeline import pad_rows
from open_r1_jax.model import lora
from open_r1_jax.model.layers import DTYPES
from open_r1_jax.parallel.mesh import batch_sharding, check_batch, make_mesh, replicated
from open_r1_jax.training import disk_offload
from open_r1_jax.training import metrics as M
from open_r1_jax.training.offload import OFFLOADED, on_device, resident_bytes
from open_r1_jax.training.optim import make_optimizer, schedule
from open_r1_jax.training.stages import STAGES, Stage, StageContext
from open_r1_jax.training.state import create_train_state
from open_r1_jax.training.step import make_train_step, model_params

log = logging.getLogger("open_r1_jax")
EXPERT_KEYS = ("expert_counts", "dropped", "finite")  # step metrics that are not plain scalars to log


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became non-finite; the run stopped before writing a checkpoint."""


def train(cfg: Config, stage: Stage | None = None) -> dict:
    """Run the stage ``train.stage`` (or ``stage``) of ``cfg``; -> the summary written to summary.json."""
    return Trainer(cfg, stage).run()


class Trainer:
    def __init__(self, cfg: Config, stage: Stage | None = None):
        self.stage = stage or STAGES[cfg.train.stage](cfg)
        self.t_start = time.perf_counter()

    def run(self) -> dict:
        stage = self.stage
        for key, why in ignored_keys(stage.cfg):
            log.warning("config: %s is set but ignored: %s", key, why)
        pretrained = stage.initial_weights()  # may replace stage.cfg.model with the weights' architecture
        cfg = self.cfg = stage.cfg
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump_yaml(cfg, self.run_dir / "config.yaml")
        self.mesh = make_mesh(cfg.mesh)
        check_batch(cfg.train.global_batch, cfg.train.micro_batch, self.mesh)
        log.info(
            "mesh: %s over %d %s device(s) in %d process(es); stage %s",
            dict(self.mesh.shape),
            self.mesh.size,
            jax.devices()[0].platform,
            jax.process_count(),
            stage.name,
        )
        if self.mesh.shape["data"] != cfg.mesh.data:
            log.info("the CPU host is split into one device per core (mesh.cpu_devices=1 keeps one device)")
        with jax.set_mesh(self.mesh):  # shard_map (expert parallelism) traces under this mesh
            return self._run(pretrained)

    # ------------------------------------------------------------------------------------------ setup

    def _build(self, pretrained) -> dict:
        cfg, stage, mesh = self.cfg, self.stage, self.mesh
        # the stage freezes some parameters, or LoRA trains only its adapters
        masked = cfg.lora.rank > 0 or type(stage).trainable is not Stage.trainable
        self.tx = make_optimizer(cfg.train, stage.trainable if masked else None)
        if cfg.train.offload_dir:
            disk_offload.check(masked)
        graphdef, state, self.shardings = create_train_state(cfg, self.tx, mesh)
        if pretrained is not None:
            params = {**pretrained.params, **{k: v for k, v in state["params"].items() if k == lora.KEY}}
            state = {
                **state,
                "params": jax.device_put(params, self.shardings["params"]),
                "model_state": jax.device_put(pretrained.model_state, self.shardings["model_state"]),
            }
        self.disk = None
        if cfg.train.offload_dir:  # the moments on disk: the state holds none (training/disk_offload.py)
            self.opt_shardings, self.shardings = self.shardings["opt_state"], {**self.shardings, "opt_state": ()}
            self.disk = disk_offload.DiskMoments(self.tx, cfg.train, state["params"])
            self.disk.init(state["params"])
        view = self.view(state)
        model_view = {**view, "params": model_params(view["params"], cfg)}  # what stages see: adapters folded
        self.bsh = batch_sharding(mesh)
        rows = cfg.train.global_batch // jax.process_count()
        stage.setup(StageContext(self.run_dir, graphdef, model_view, self.put, rows, mesh))
        self.rows = rows
        n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
        self.state_bytes, host_bytes = resident_bytes(state)
        log.info(
            "model: %.2fM parameters, %.2fM active matmul parameters per token; %.1f MB of train state on each "
            "device%s",
            n_params / 1e6,
            M.active_matmul_params(cfg.model) / 1e6,
            self.state_bytes / 1e6,
            f", {host_bytes / 1e6:.1f} MB in host memory (train.offload={cfg.train.offload})" if host_bytes else "",
        )
        if lora.KEY in state["params"]:
            n_lora = lora.count(state["params"])
            log.info(
                "lora: %d adapter parameters (%.2f%% of %d), rank %d, targets %s; only they train",
                n_lora,
                100 * n_lora / (n_params - n_lora),
                n_params - n_lora,
                cfg.lora.rank,
                ",".join(cfg.lora.targets),
            )
        return state

    def view(self, state: dict) -> dict:
        """The state as stages read it: parameters offloaded to host memory are copied to the device."""
        if "params" not in OFFLOADED[self.cfg.train.offload]:
            return state
        return {**state, "params": jax.device_put(state["params"], on_device(self.shardings["params"]))}

    def batch_view(self, state: dict) -> dict:
        """What ``next_batch`` gets: the device view only for stages whose batches read the state
        (GRPO generates with the policy); the others would pay a copy of the parameters per step."""
        return state if type(self.stage).next_batch is Stage.next_batch else self.view(state)

    def saved(self, state: dict) -> dict:
        """The state as checkpoints hold it: with the moments on disk, their tree read back."""
        if self.disk is None:
            return state
        return {**state, "opt_state": jax.device_put(self.disk.to_tree(), self.opt_shardings)}

    def restore(self, ckpt: Checkpointer, step: int, state: dict) -> dict:
        """``step``'s state; with the moments on disk, the checkpoint's moments are written there."""
        if self.disk is None or "optimizer" not in ckpt.items(step):
            return ckpt.restore(step, state, self.stage.train_iter)
        moments = jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), self.disk.layout, self.opt_shardings
        )
        restored = ckpt.restore(step, {**state, "opt_state": moments}, self.stage.train_iter)
        self.disk.load_tree(restored["opt_state"])
        return {**restored, "opt_state": ()}

    def step(self, compiled, state: dict, batch: dict):
        """One train step; with the moments on disk, then the streamed update (DiskMoments.update)."""
        if self.disk is None:
            return compiled(state, self.put(batch), self.stage.frozen)
        state, metrics, grads = compiled(state, self.put(batch), self.stage.frozen)
        return {**state, "params": self.disk.update(grads, state["params"], metrics["finite"])}, metrics

    def put(self, batch: dict) -> dict:
        """This process's rows of a host batch -> global arrays sharded over the batch axes."""
        return {k: jax.make_array_from_process_local_data(self.bsh, v) for k, v in batch.items()}

    def _compile(self, state, first_batch):
        cfg, stage, sh = self.cfg, self.stage, self.shardings
        frozen_sh = jax.tree.map(lambda x: x.sharding, stage.frozen)
        step = jax.jit(
            make_train_step(stage, self.tx, cfg),
            donate_argnums=0,
            in_shardings=(sh, self.bsh, frozen_sh),
            out_shardings=(sh, replicated(self.mesh)) + ((sh["params"],) if self.disk else ()),
        )
        self.eval_fn = jax.jit(
            lambda p, s, b, f: stage.eval_fn(model_params(p, cfg), s, {**b, "frozen": f}),
            in_shardings=(on_device(sh["params"]), sh["model_state"], self.bsh, frozen_sh),
        )
        t0 = time.perf_counter()
        compiled = step.lower(state, self.put(first_batch), stage.frozen).compile()
        log.info("train step compiled in %.1fs", time.perf_counter() - t0)
        return compiled

    def evaluate(self, state) -> dict:
        """The stage's held-out figures (``eval_`` prefixed); {} when it has no held-out data."""
        state = self.view(state)
        sums: dict[str, float] = {}
        for batch in self.stage.eval_batches():
            out = jax.device_get(
                self.eval_fn(
                    state["params"], state["model_state"], self.put(pad_rows(batch, self.rows)), self.stage.frozen
                )
            )
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out = self.stage.eval_metrics(sums) if sums else {}
        out.update(self.stage.eval_host(model_params(state["params"], self.cfg), state["model_state"]))
        return {f"eval_{k}": v for k, v in out.items()}

    # ------------------------------------------------------------------------------------------ loop

    def _run(self, pretrained) -> dict:
        cfg, stage, t = self.cfg, self.stage, self.cfg.train
        state = self._build(pretrained)
        ckpt = Checkpointer(self.run_dir / "checkpoints", t.keep_checkpoints)
        counters = {"tokens_seen": 0, "train_seconds": 0.0, "wall_seconds": 0.0}
        start = ckpt.latest_step()
        if start is not None:  # step 0: imported weights (export --from-torch), fresh optimizer and data
            state = self.restore(ckpt, start, state)
            counters.update(ckpt.counters(start))
            log.info(
                "resumed from %s at step %d (%d tokens seen)",
                ckpt.directory / str(start),
                start,
                counters["tokens_seen"],
            )
        start = start or 0
        wall_before = counters["wall_seconds"]
        if start >= t.steps:
            log.info("run already complete: step %d of %d (raise train.steps to continue)", start, t.steps)
            ckpt.close()
            path = self.run_dir / "summary.json"
            return json.loads(path.read_text()) if path.is_file() else {"steps": start}

        first = stage.next_batch(self.batch_view(state))
        compiled = self._compile(state, first)
        self.lr_at, self.peak, self.fpt = schedule(t), self._peak_flops(), M.flops_per_token(cfg.model, t.seq_len)
        writer = M.MetricsWriter(self.run_dir, cfg.run.tensorboard, resume_step=start)
        eval_record = {}
        if stage.eval_at_start and start == 0:
            counters["eval_before"] = self.evaluate(state)
            writer.write({"step": 0, **counters["eval_before"]})
            log.info("held-out before training: %s", _brief(counters["eval_before"]))

        last_saved = start if start else None
        pbar = tqdm(total=t.steps, initial=start, desc=stage.name, disable=not cfg.run.progress, dynamic_ncols=True)
        t_window, tok_window = time.perf_counter(), 0
        batch = first
        try:
            for step in range(start, t.steps):
                if step > start:
                    batch = stage.next_batch(self.batch_view(state))
                state, metrics = self.step(compiled, state, batch)
                tok_window += stage.tokens(batch) * jax.process_count()
                done = step + 1
                pbar.update(1)
                log_now = done % t.log_every == 0 or done == t.steps
                ckpt_now = done == t.steps or (t.checkpoint_every and done % t.checkpoint_every == 0)
                eval_now = done == t.steps or (t.eval_every and done % t.eval_every == 0)
                if not (log_now or ckpt_now or eval_now):
                    continue
                # steps are dispatched asynchronously: wait until this window's steps have *run*, or
                # the window would time their dispatch only (tokens/s, MFU and train_seconds too high)
                jax.block_until_ready(metrics)
                dt = time.perf_counter() - t_window
                counters["train_seconds"] += dt
                counters["tokens_seen"] += tok_window
                record = self._record(done, state, metrics, counters, tok_window / dt if dt > 0 else 0.0, last_saved)
                if eval_now:
                    eval_record = self.evaluate(state)
                    record.update(eval_record)
                writer.write(record)
                pbar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_sec']:,.0f}", refresh=False)
                if ckpt_now:
                    counters["wall_seconds"] = wall_before + time.perf_counter() - self.t_start
                    ckpt.save(done, self.saved(state), stage.train_iter, config_lib.to_dict(cfg), counters=counters)
                    last_saved = done
                t_window, tok_window = time.perf_counter(), 0
        finally:
            pbar.close()
            writer.close()
            ckpt.close()
        counters["wall_seconds"] = wall_before + time.perf_counter() - self.t_start
        return self._summary(counters, eval_record, self.peak, state)

    def _peak_flops(self) -> float:
        """Peak FLOP/s of the mesh for MFU: run.peak_tflops per GPU / CPU host, else a matmul measured here."""
        cfg, units = self.cfg, M.hardware_units(self.mesh.devices.flat)
        if cfg.run.peak_tflops:
            return cfg.run.peak_tflops * 1e12 * units
        dtype = DTYPES[cfg.model.dtype]
        return M.measure_peak_flops(dtype if dtype != jnp.float16 else jnp.float32) * units

    def _record(self, done: int, state, metrics, counters: dict, tps: float, last_saved) -> dict:
        """The metrics line of a log point (one host transfer); stops the run on a non-finite step."""
        keys = ("nonfinite_step", "skipped", "loss_scale")
        m, counts = jax.device_get((metrics, {k: state[k] for k in keys}))
        bad = int(counts["nonfinite_step"])
        if bad >= 0:
            raise TrainingDiverged(
                f"loss or gradients became non-finite at step {bad + 1}; stopped before writing a "
                f"checkpoint (last good checkpoint: step {last_saved})"
            )
        record = {
            "step": done,
            **{k: float(v) for k, v in m.items() if k not in EXPERT_KEYS},
            "lr": float(self.lr_at(done - 1)),
            "tokens_per_sec": tps,
            "mfu": tps * self.fpt / self.peak,
            "tokens_seen": counters["tokens_seen"],
            "skipped_steps": int(counts["skipped"]),
        }
        if self.cfg.model.dtype == "float16":
            record["loss_scale"] = float(counts["loss_scale"])
        if "expert_counts" in m:
            record.update(M.expert_load_stats(np.asarray(m["expert_counts"])), dropped_rows=int(m["dropped"]))
        return record

    def _trainable_count(self, params: dict) -> int:
        mask = self.stage.trainable(params)
        sizes = jax.tree.leaves(jax.tree.map(lambda x: x.size, params))
        return int(sum(sizes) if mask is None else sum(n for n, t in zip(sizes, jax.tree.leaves(mask)) if t))

    def _summary(self, counters: dict, eval_record: dict, peak: float, state) -> dict:
        cfg = self.cfg
        watts = cfg.run.device_watts or M.default_device_watts()
        kwh = watts * M.hardware_units(self.mesh.devices.flat) * counters["wall_seconds"] / 3.6e6 * cfg.run.pue
        summary = {
            "stage": self.stage.name,
            "steps": cfg.train.steps,
            "tokens_seen": counters["tokens_seen"],
            "wall_seconds": counters["wall_seconds"],
            "train_seconds": counters["train_seconds"],
            "peak_memory_bytes": M.peak_memory_bytes(),
            "peak_flops_used_for_mfu": peak,
            "energy_kwh": kwh,
            "co2_kg": kwh * cfg.run.grid_kg_per_kwh,
            "skipped_steps": int(jax.device_get(state["skipped"])),
            "train_state_bytes_per_device": self.state_bytes,
            "trainable_params": self._trainable_count(state["params"]),
            **eval_record,
        }
        if "eval_before" in counters:
            summary["eval_before"] = counters["eval_before"]
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _brief(record: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in record.items())
