"""Direct Preference Optimisation (Rafailov et al. 2023), the seed's second stage, after TRL's DPOTrainer.

h = (logp_c - ref_logp_c) - (logp_r - ref_logp_r), with sequence log-probs summed over response tokens.
- ``sigmoid``: -(1 - eps) log s(beta h) - eps log s(-beta h). With label smoothing eps > 0 this is the
  "conservative DPO" of TRL <= 0.28 (newer TRL ignores label_smoothing for the sigmoid loss); eps = 0
  is plain DPO in every version.
- ``ipo``: (h_avg - 1/(2 beta))^2 where h_avg uses per-token *averaged* log-probs (TRL).
- ``hinge``: relu(1 - beta h).
Metrics (TRL names): rewards/chosen = beta (logp_c - ref_logp_c), rewards/rejected, rewards/accuracies
(chosen reward > rejected reward), rewards/margins, logps/chosen, logps/rejected.

The reference is the starting policy: its log-probs are computed once before training
(``dpo.reference: precomputed``), or by a frozen copy of its weights in every step (``model``).
MoE auxiliary losses are added as in pretraining; router biases stay frozen during DPO.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from open_r1_jax import config as config_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import Config, ConfigError, DPOConfig
from open_r1_jax.data import preference as pref
from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer
from open_r1_jax.parallel.mesh import batch_sharding, check_batch, make_mesh, replicated
from open_r1_jax.training.metrics import MetricsWriter
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.state import create_train_state
from open_r1_jax.training.step import merge_model

log = logging.getLogger("open_r1_jax")
SIDES = ("chosen", "rejected")


def dpo_loss(pc, pr, rc, rr, cfg: DPOConfig, n_c=None, n_r=None):
    """Per-pair losses [P] and TRL metrics from policy (p*) and reference (r*) sequence log-probs [P]."""
    h = (pc - rc) - (pr - rr)
    if cfg.loss == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(cfg.beta * h) - eps * jax.nn.log_sigmoid(-cfg.beta * h)
    elif cfg.loss == "ipo":
        h_avg = (pc - rc) / n_c - (pr - rr) / n_r
        losses = jnp.square(h_avg - 1 / (2 * cfg.beta))
    else:
        losses = jax.nn.relu(1 - cfg.beta * h)
    r_c, r_r = cfg.beta * (pc - rc), cfg.beta * (pr - rr)
    metrics = {"rewards/chosen": jnp.mean(r_c), "rewards/rejected": jnp.mean(r_r),
               "rewards/accuracies": jnp.mean((r_c > r_r).astype(jnp.float32)),
               "rewards/margins": jnp.mean(r_c - r_r), "logps/chosen": jnp.mean(pc), "logps/rejected": jnp.mean(pr)}
    return losses, metrics


def sequence_logps(graphdef, params, model_state, batch, rng=None):
    """Both sides in one forward: -> (logp_c [P], logp_r [P], n_c, n_r, aux_loss). ``rng``: LSH rotations."""
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
    inputs, targets, mask, seg = cat("inputs"), cat("targets"), cat("mask"), cat("segment_ids")
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    logits, aux = merge_model(graphdef, params, model_state)(inputs, positions, seg, rng=rng)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    m = mask.astype(jnp.float32)
    lp, n = jnp.sum(tok * m, axis=-1), jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    p = lp.shape[0] // 2
    return lp[:p], lp[p:], n[:p], n[p:], aux["aux_loss"]


def make_dpo_step(graphdef, tx: optax.GradientTransformation, cfg: Config):
    d = cfg.dpo

    def loss_fn(params, model_state, batch, ref_params, rng):
        pc, pr, n_c, n_r, aux_loss = sequence_logps(graphdef, params, model_state, batch, rng)
        if d.reference == "model":
            rc, rr, _, _, _ = sequence_logps(graphdef, jax.lax.stop_gradient(ref_params), model_state, batch, rng)
        else:
            rc, rr = batch["ref_chosen"], batch["ref_rejected"]
        losses, metrics = dpo_loss(pc, pr, rc, rr, d, n_c, n_r)
        loss = jnp.mean(losses)
        return loss + aux_loss, {**metrics, "loss": loss, "aux_loss": aux_loss}

    def step(state, batch, ref_params):
        # fresh LSH rotations every step (unused by full attention); evaluation uses the fixed ones
        rng = jax.random.fold_in(jax.random.key(cfg.train.seed), state["step"])
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["model_state"], batch, ref_params, rng)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new = {**state, "step": state["step"] + 1, "params": keep(params, state["params"]),
               "opt_state": keep(opt_state, state["opt_state"]),
               "skipped": state["skipped"] + (~finite).astype(jnp.int32),
               "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite, state["step"],
                                           state["nonfinite_step"])}
        return new, {**metrics, "grad_norm": grad_norm}

    return step


class _Rows:
    """Random access over the rows of the encoded pair arrays (grain source; picklable)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}


def _tokenizer_for(path: Path):
    for d in (path, *path.parents[:3]):
        if (d / "tokenizer.json").is_file():
            return BPETokenizer.load(d / "tokenizer.json")
    return ByteTokenizer()


def _load_pairs(cfg: Config, tokenizer) -> tuple[dict, dict | None, pref.PairReport]:
    d, report = cfg.dpo, pref.PairReport()
    if d.train_path:
        train = pref.read_pairs(d.train_path, d.max_bad_fraction, report)
        held = pref.read_pairs(d.eval_path, d.max_bad_fraction, report) if d.eval_path else None
    else:
        train = pref.demo_pairs(False, d.demo_pairs, cfg.train.seed)
        held = pref.demo_pairs(True, d.demo_eval_pairs, cfg.train.seed)
    for bad in report.bad[:5]:
        log.warning("dpo data: skipped %s", bad)
    train_arr = pref.encode_pairs(train, tokenizer, d, report)
    held_arr = pref.encode_pairs(held, tokenizer, d, report) if held else None
    return train_arr, held_arr, report


def _batches(arrays: dict, rows: int) -> list[dict]:
    n = len(next(iter(arrays.values())))
    out = []
    for s in range(0, n, rows):
        b = {k: v[s:s + rows] for k, v in arrays.items()}
        if len(next(iter(b.values()))) < rows:  # pad with empty pairs (mask 0: they add nothing)
            b = {k: np.pad(v, ((0, rows - len(v)),) + ((0, 0),) * (v.ndim - 1)) for k, v in b.items()}
        out.append(b)
    return out


def train_dpo(cfg: Config) -> dict:
    """The DPO stage: policy from ``dpo.init_from``, preference pairs, the same mesh machinery."""
    from open_r1_jax.pretrained import load_pretrained

    t_start = time.perf_counter()
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pre = load_pretrained(cfg.dpo.init_from)
    cfg = dataclasses.replace(cfg, model=pre.config)  # the policy's architecture comes with its weights
    if cfg.dpo.max_len > cfg.model.max_seq_len:
        raise ConfigError(f"dpo.max_len ({cfg.dpo.max_len}) must be <= the policy's model.max_seq_len "
                          f"({cfg.model.max_seq_len})")
    config_lib.dump_yaml(cfg, run_dir / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    check_batch(cfg.train.global_batch, 0, mesh)
    log.info("dpo: policy and reference from %s; loss %s, beta %g", pre.source, cfg.dpo.loss, cfg.dpo.beta)
    with jax.set_mesh(mesh):
        return _train_dpo(cfg, pre, mesh, run_dir, t_start)


def _train_dpo(cfg: Config, pre, mesh, run_dir: Path, t_start: float) -> dict:
    tokenizer = _tokenizer_for(Path(cfg.dpo.init_from))
    train_arr, held_arr, report = _load_pairs(cfg, tokenizer)
    log.info("dpo data: %s", report.summary())
    tx = make_optimizer(cfg.train)
    graphdef, state, sh = create_train_state(cfg, tx, mesh)
    state = {**state, "params": jax.device_put(pre.params, sh["params"]),
             "model_state": jax.device_put(pre.model_state, sh["model_state"])}
    ref_params = state["params"]
    bsh, rows = batch_sharding(mesh), cfg.train.global_batch // jax.process_count()
    put = lambda b: {k: jax.make_array_from_process_local_data(bsh, v) for k, v in b.items()}

    ref_fn = jax.jit(lambda p, s, b: sequence_logps(graphdef, p, s, b)[:2])
    if cfg.dpo.reference == "precomputed":
        for arrays in filter(None, (train_arr, held_arr)):
            n = len(arrays["chosen_inputs"])
            outs = [jax.device_get(ref_fn(ref_params, state["model_state"], put(b))) for b in _batches(arrays, rows)]
            arrays["ref_chosen"] = np.concatenate([o[0] for o in outs])[:n].astype(np.float32)
            arrays["ref_rejected"] = np.concatenate([o[1] for o in outs])[:n].astype(np.float32)
        log.info("dpo: reference log-probs precomputed for %d pairs", len(train_arr["chosen_inputs"]))

    ds = grain.MapDataset.source(_Rows(train_arr)).seed(cfg.train.seed).shuffle().repeat().batch(rows)
    data_iter = iter(ds.to_iter_dataset())
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, data_iter)
        log.info("dpo: resumed at step %d", start)
    step_fn = jax.jit(make_dpo_step(graphdef, tx, cfg), donate_argnums=0,
                      in_shardings=(sh, bsh, sh["params"]), out_shardings=(sh, replicated(mesh)))
    eval_fn = jax.jit(lambda p, s, b, r: dpo_eval(graphdef, p, s, b, r, cfg.dpo))

    def evaluate(st) -> dict:
        if held_arr is None:
            return {}
        sums, n = {}, 0
        for b in _batches(held_arr, rows):
            valid = int(np.count_nonzero(b["chosen_mask"].any(axis=1)))
            m = jax.device_get(eval_fn(st["params"], st["model_state"], put(b), ref_params))
            for k, v in m.items():  # per-pair sums over real pairs
                sums[k] = sums.get(k, 0.0) + float(v)
            n += valid
        return {f"eval_{k}": v / max(n, 1) for k, v in sums.items()}

    writer = MetricsWriter(run_dir, cfg.run.tensorboard, resume_step=start)
    t = cfg.train
    record = {"step": start, **evaluate(state)} if start == 0 else {}
    if record:
        writer.write(record)
        log.info("dpo: held-out before training: accuracy %.3f, margin %.3f",
                 record.get("eval_rewards/accuracies", float("nan")), record.get("eval_rewards/margins", float("nan")))
    first_eval = record
    pbar = tqdm(total=t.steps, initial=start, desc="dpo", disable=not cfg.run.progress, dynamic_ncols=True)
    try:
        for step in range(start, t.steps):
            state, m = step_fn(state, put(next(data_iter)), ref_params)
            done = step + 1
            pbar.update(1)
            eval_now = done == t.steps or (t.eval_every and done % t.eval_every == 0)
            if not (done % t.log_every == 0 or eval_now or done == t.steps):
                continue
            bad = int(jax.device_get(state["nonfinite_step"]))
            if bad >= 0:
                from open_r1_jax.training.loop import TrainingDiverged

                raise TrainingDiverged(f"dpo loss or gradients became non-finite at step {bad + 1}")
            record = {"step": done, **{k: float(v) for k, v in jax.device_get(m).items()}}
            if eval_now:
                record.update(evaluate(state))
            writer.write(record)
            pbar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['rewards/accuracies']:.2f}", refresh=False)
            if done == t.steps or (t.checkpoint_every and done % t.checkpoint_every == 0):
                ckpt.save(done, state, data_iter, config_lib.to_dict(cfg))
    finally:
        pbar.close()
        writer.close()
        ckpt.close()
    summary = {"steps": t.steps, "wall_seconds": time.perf_counter() - t_start,
               "before": {k: v for k, v in first_eval.items() if k.startswith("eval_")},
               "after": {k: v for k, v in record.items() if k.startswith("eval_")}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def dpo_eval(graphdef, params, model_state, batch, ref_params, d: DPOConfig) -> dict:
    """Sums over the real pairs of a held-out batch (padding pairs have empty masks)."""
    pc, pr, n_c, n_r, _ = sequence_logps(graphdef, params, model_state, batch)
    if d.reference == "model":
        rc, rr, _, _, _ = sequence_logps(graphdef, ref_params, model_state, batch)
    else:
        rc, rr = batch["ref_chosen"], batch["ref_rejected"]
    real = jnp.any(batch["chosen_mask"] > 0, axis=-1).astype(jnp.float32)
    losses, _ = dpo_loss(pc, pr, rc, rr, d, n_c, n_r)
    r_c, r_r = d.beta * (pc - rc), d.beta * (pr - rr)
    s = lambda x: jnp.sum(x * real)
    return {"loss": s(losses), "rewards/chosen": s(r_c), "rewards/rejected": s(r_r),
            "rewards/accuracies": s((r_c > r_r).astype(jnp.float32)), "rewards/margins": s(r_c - r_r),
            "logps/chosen": s(pc), "logps/rejected": s(pr)}
