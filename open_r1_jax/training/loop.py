"""The pretraining loop: data, model, optimiser, jitted step, logs, evaluation, checkpoints.

``train(cfg)`` is importable and returns the run summary; ``python -m open_r1_jax.train`` is a thin
CLI over it. Running the same config again with the same ``run.dir`` resumes from the latest
checkpoint (state, and the data iterator where it stopped).
"""
from __future__ import annotations

import json
import logging
import math
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from open_r1_jax import config as config_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import Config, ConfigError
from open_r1_jax.data.mixture import MixtureReport, MixtureStats, open_prepared
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset, make_mixture_dataset, tokenize
from open_r1_jax.data.sources import load_documents
from open_r1_jax.data.tokenizer import build_tokenizer
from open_r1_jax.model import build_model
from open_r1_jax.model.layers import DTYPES
from open_r1_jax.parallel.mesh import batch_sharding, check_batch, make_mesh, per_device_bytes, replicated
from open_r1_jax.training import metrics as M
from open_r1_jax.training.optim import make_optimizer, schedule
from open_r1_jax.training.state import create_train_state
from open_r1_jax.training.step import make_eval_step, make_train_step

log = logging.getLogger("open_r1_jax")


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became non-finite; the run stopped before writing a checkpoint."""


@dataclass
class Data:
    tokenizer: object
    train_iter: object
    eval_source: ChunkSource  # or shards.RecordChunkSource (prepared data): the same items
    spec: PipelineSpec
    mixture: tuple[str, ...] = ()  # sources mixed in train_iter (prepared data)


def build_data(cfg: Config, run_dir: Path) -> Data:
    if cfg.data.kind == "arrayrecord":  # shards written by `python -m open_r1_jax.data.prepare`
        prep = open_prepared(cfg.data, cfg.train.seq_len)
        if prep.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the vocabulary of the "
                              f"tokenizer in {cfg.data.prepared_dir} ({prep.tokenizer.vocab_size})")
        log.info("data: prepared shards in %s: %s; %d held-out tokens", cfg.data.prepared_dir,
                 ", ".join(f"{n} (weight {w:.3f}, {s.n_target_tokens} tokens)"
                           for n, w, s in zip(prep.names, prep.weights, prep.train_sources)),
                 prep.eval_source.n_target_tokens)
        spec = PipelineSpec(cfg.train.seq_len, cfg.train.global_batch // jax.process_count(), cfg.train.seed,
                            cfg.data.packing_bins, train=True, num_shards=cfg.data.shards)
        train_ds = MixtureStats(make_mixture_dataset(prep.train_sources, prep.weights, spec), prep.names,
                                prep.weights, cfg.train.log_every, MixtureReport(run_dir / "data_mixture.json", log))
        return Data(prep.tokenizer, iter(train_ds), prep.eval_source, spec, tuple(prep.names))
    train_docs, heldout_docs, report = load_documents(cfg.data)
    log.info("data: %s; %d train / %d held-out documents", report.summary(), len(train_docs), len(heldout_docs))
    for bad in report.bad_records[:5]:
        log.warning("data: skipped %s", bad)
    tok = build_tokenizer(cfg.data.tokenizer, [d.text for d in train_docs], cfg.data.bpe_vocab_size,
                          run_dir / "tokenizer.json")
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the "
                          f"{cfg.data.tokenizer} tokenizer's vocabulary ({tok.vocab_size})")
    progress = cfg.run.progress
    train_src = ChunkSource(tokenize([d.text for d in train_docs], tok, "tokenize train", progress),
                            cfg.train.seq_len, tok.eos_id)
    eval_src = ChunkSource(tokenize([d.text for d in heldout_docs], tok, "tokenize held-out", progress),
                           cfg.train.seq_len, tok.eos_id)
    counts = np.bincount(train_src.tokens)
    p = counts[counts > 0] / counts.sum()
    log.info("data: %d train tokens in %d chunks, %d held-out tokens; unigram entropy of the train tokens "
             "%.3f nats (a loss far below it means the model uses context)", train_src.n_target_tokens,
             len(train_src), eval_src.n_target_tokens, float(-(p * np.log(p)).sum()))
    spec = PipelineSpec(cfg.train.seq_len, cfg.train.global_batch // jax.process_count(), cfg.train.seed,
                        cfg.data.packing_bins, train=True, num_shards=cfg.data.shards)
    return Data(tok, iter(make_dataset(train_src, spec)), eval_src, spec)


def _put(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _pad_rows(batch: dict, rows: int) -> dict:
    n = next(iter(batch.values())).shape[0]
    return batch if n == rows else {k: np.pad(v, ((0, rows - n), (0, 0))) for k, v in batch.items()}


def evaluate(eval_fn, state, data: Data, n_batches: int, sharding) -> dict:
    spec = dataclasses.replace(data.spec, train=False)
    nll = n_tok = n_bytes = 0.0
    it = iter(make_dataset(data.eval_source, spec))
    empty = {k: np.zeros((spec.batch, spec.seq_len), np.int32)
             for k in ("inputs", "targets", "positions", "segment_ids")}
    for _ in range(n_batches):  # every process runs the same number of (global) eval steps
        batch = next(it, None)
        batch = empty if batch is None else _pad_rows(batch, spec.batch)  # all-padding: adds nothing
        out = eval_fn(state["params"], state["model_state"], _put(batch, sharding))
        a, b, c = (float(x) for x in jax.device_get(out))
        nll, n_tok, n_bytes = nll + a, n_tok + b, n_bytes + c
    if n_tok == 0:
        return {}
    loss = nll / n_tok
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 80.0)),
            "eval_bits_per_byte": nll / math.log(2) / max(n_bytes, 1.0), "eval_tokens": int(n_tok)}


def train(cfg: Config) -> dict:
    t_start = time.perf_counter()
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.dump_yaml(cfg, run_dir / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    check_batch(cfg.train.global_batch, cfg.train.micro_batch, mesh)
    log.info("mesh: %s over %d %s device(s) in %d process(es)", dict(mesh.shape), mesh.size,
             jax.devices()[0].platform, jax.process_count())
    with jax.set_mesh(mesh):  # the MoE layers read the expert axis from this mesh while tracing
        return _train(cfg, mesh, run_dir, t_start)


def _train(cfg: Config, mesh, run_dir: Path, t_start: float) -> dict:
    data = build_data(cfg, run_dir)
    tx = make_optimizer(cfg.train)
    graphdef, state, shardings = create_train_state(cfg, tx, mesh, build=build_model)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    n_active = M.active_matmul_params(cfg.model)
    log.info("model: %.2fM parameters, %.2fM active matmul parameters per token; %.1f MB of train state "
             "on each device", n_params / 1e6, n_active / 1e6, per_device_bytes(state) / 1e6)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints)
    start = ckpt.latest_step()
    if start is not None:  # step 0: imported weights (export --from-torch), fresh optimizer and data
        state = ckpt.restore(start, state, data.train_iter)
        log.info("resumed from %s at step %d", ckpt.directory / str(start), start)
    start = start or 0

    if start >= cfg.train.steps:
        log.info("run already complete: step %d of %d (raise train.steps to continue)", start, cfg.train.steps)
        ckpt.close()
        summary_path = run_dir / "summary.json"
        return json.loads(summary_path.read_text()) if summary_path.is_file() else {"steps": start}
    bsh = batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(graphdef, tx, cfg), donate_argnums=0,
                      in_shardings=(shardings, bsh), out_shardings=(shardings, replicated(mesh)))
    eval_fn = jax.jit(make_eval_step(graphdef, jnp.asarray(data.tokenizer.token_bytes)),
                      in_shardings=(shardings["params"], shardings["model_state"], bsh))
    lr_at = schedule(cfg.train)
    dtype = DTYPES[cfg.model.dtype]
    peak = (cfg.run.peak_tflops * 1e12 if cfg.run.peak_tflops
            else M.measure_peak_flops(dtype if dtype != jnp.float16 else jnp.float32)) * mesh.size
    fpt = M.flops_per_token(cfg.model, cfg.train.seq_len)
    writer = M.MetricsWriter(run_dir, cfg.run.tensorboard, resume_step=start)
    t = cfg.train

    first = next(data.train_iter)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, _put(first, bsh)).compile()
    log.info("train step compiled in %.1fs", time.perf_counter() - t0)

    tokens_seen, last_saved, eval_record = 0, start if start else None, {}
    pbar = tqdm(total=t.steps, initial=start, desc="train", disable=not cfg.run.progress, dynamic_ncols=True)
    t_window, tok_window, t_train = time.perf_counter(), 0.0, 0.0
    batch = first
    try:
        for step in range(start, t.steps):
            if step > start:
                batch = next(data.train_iter)
            state, metrics = compiled(state, _put(batch, bsh))
            tok_window += float(np.count_nonzero(batch["segment_ids"])) * jax.process_count()
            done = step + 1
            pbar.update(1)
            logging_now = done % t.log_every == 0 or done == t.steps
            ckpt_now = done == t.steps or (t.checkpoint_every and done % t.checkpoint_every == 0)
            eval_now = done == t.steps or (t.eval_every and done % t.eval_every == 0)
            if not (logging_now or ckpt_now or eval_now):
                continue
            m = jax.device_get(metrics)
            counters = jax.device_get({k: state[k] for k in ("nonfinite_step", "skipped", "loss_scale")})
            bad = int(counters["nonfinite_step"])
            if bad >= 0:
                raise TrainingDiverged(
                    f"loss or gradients became non-finite at step {bad + 1}; stopped before writing a "
                    f"checkpoint (last good checkpoint: step {last_saved})")
            now = time.perf_counter()
            dt = now - t_window
            t_train += dt
            tokens_seen = int(tokens_seen + tok_window)
            tps = tok_window / dt if dt > 0 else 0.0
            record = {"step": done, "loss": float(m["loss"]), "aux_loss": float(m["aux_loss"]),
                      "lr": float(lr_at(done - 1)), "grad_norm": float(m["grad_norm"]),
                      "tokens_per_sec": tps, "mfu": tps * fpt / peak, "tokens_seen": tokens_seen,
                      "skipped_steps": int(counters["skipped"]),
                      "dropped_rows": int(m["dropped"])}
            if cfg.model.dtype == "float16":
                record["loss_scale"] = float(counters["loss_scale"])
            record.update(M.expert_load_stats(np.asarray(m["expert_counts"])))
            if eval_now:
                eval_record = evaluate(eval_fn, state, data, t.eval_batches, bsh)
                record.update(eval_record)
            writer.write(record)
            pbar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            if ckpt_now:
                ckpt.save(done, state, data.train_iter, config_lib.to_dict(cfg))
                last_saved = done
            t_window, tok_window = time.perf_counter(), 0.0
    finally:
        pbar.close()
        writer.close()
        ckpt.close()
    return _summary(cfg, run_dir, t_start, t_train, tokens_seen, eval_record, peak, mesh.size, state)


def _summary(cfg, run_dir, t_start, t_train, tokens_seen, eval_record, peak, n_devices, state) -> dict:
    wall = time.perf_counter() - t_start
    watts = cfg.run.device_watts or M.default_device_watts()
    kwh = watts * n_devices * wall / 3.6e6 * cfg.run.pue
    summary = {"steps": cfg.train.steps, "tokens_seen": tokens_seen, "wall_seconds": wall,
               "train_seconds": t_train, "peak_memory_bytes": M.peak_memory_bytes(),
               "peak_flops_used_for_mfu": peak, "energy_kwh": kwh,
               "co2_kg": kwh * cfg.run.grid_kg_per_kwh,
               "skipped_steps": int(jax.device_get(state["skipped"])), **eval_record}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
