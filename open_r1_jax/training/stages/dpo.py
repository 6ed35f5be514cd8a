"""Direct Preference Optimisation (Rafailov et al. 2023), the seed's second stage, after TRL's DPOTrainer.

h = (logp_c - ref_logp_c) - (logp_r - ref_logp_r), with sequence log-probs summed over response tokens.
- ``sigmoid``: -(1 - eps) log s(beta h) - eps log s(-beta h). With label smoothing eps > 0 this is the
  "conservative DPO" of TRL <= 0.28 (newer TRL ignores label_smoothing for the sigmoid loss); eps = 0
  is plain DPO in every version.
- ``ipo``: (h_avg - 1/(2 beta))^2 where h_avg uses per-token *averaged* log-probs (TRL).
- ``hinge``: relu(1 - beta h).
Metrics (TRL names): rewards/chosen = beta (logp_c - ref_logp_c), rewards/rejected, rewards/accuracies
(chosen reward > rejected reward), rewards/margins, logps/chosen, logps/rejected.

The reference is the starting policy (``dpo.init_from``, whose architecture replaces ``model``; the
compute keys ``config.MODEL_RUNTIME_KEYS`` such as ``model.dtype`` stay this config's): its
log-probs are computed once before training (``dpo.reference: precomputed``), or by a frozen copy of
its weights in every step (``model``). Batch: ``{chosen,rejected}_{inputs,targets,mask,segment_ids}``
[P,T] (``mask``: response targets), and ``ref_chosen``/``ref_rejected`` [P] when precomputed. The loss
is the mean over real pairs (padding pairs have empty masks). MoE auxiliary losses are added as in
pretraining; router biases stay frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import ConfigError, DPOConfig
from open_r1_jax.data.pipeline import fixed_batches, shuffled_batches
from open_r1_jax.data.preference import load_pairs
from open_r1_jax.data.tokenizer import tokenizer_for
from open_r1_jax.model import merge_model
from open_r1_jax.training.stages.base import Stage, StageContext

log = logging.getLogger("open_r1_jax")


def pair_metrics(pc, pr, rc, rr, beta: float) -> dict:
    """Per-pair TRL metrics [P] from policy (p*) and reference (r*) sequence log-probs [P]."""
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    return {
        "rewards/chosen": r_c,
        "rewards/rejected": r_r,
        "rewards/accuracies": (r_c > r_r).astype(jnp.float32),
        "rewards/margins": r_c - r_r,
        "logps/chosen": pc,
        "logps/rejected": pr,
    }


def pair_losses(pc, pr, rc, rr, cfg: DPOConfig, n_c=None, n_r=None):
    """Per-pair losses [P] from sequence log-probs [P] (n_*: response tokens, for IPO)."""
    h = (pc - rc) - (pr - rr)
    if cfg.loss == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(cfg.beta * h) - eps * jax.nn.log_sigmoid(-cfg.beta * h)
    elif cfg.loss == "ipo":
        h_avg = (pc - rc) / n_c - (pr - rr) / n_r
        losses = jnp.square(h_avg - 1 / (2 * cfg.beta))
    else:
        losses = jax.nn.relu(1 - cfg.beta * h)
    return losses


def dpo_loss(pc, pr, rc, rr, cfg: DPOConfig, n_c=None, n_r=None):
    """Per-pair losses [P] and the means of the TRL metrics over the pairs."""
    metrics = pair_metrics(pc, pr, rc, rr, cfg.beta)
    return pair_losses(pc, pr, rc, rr, cfg, n_c, n_r), {k: jnp.mean(v) for k, v in metrics.items()}


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


def _real(batch) -> jax.Array:
    """[P] 1.0 for real pairs, 0.0 for the zero rows that pad a batch."""
    return jnp.any(batch["chosen_mask"] > 0, axis=-1).astype(jnp.float32)


class DPO(Stage):
    name = "dpo"
    updates_router_bias = False
    eval_at_start = True  # the "before" figures: policy == reference, so every reward is 0

    def initial_weights(self):
        pre = self.start_from(self.cfg.dpo.init_from)
        if self.cfg.dpo.max_len > pre.config.max_seq_len:
            raise ConfigError(
                f"dpo.max_len ({self.cfg.dpo.max_len}) must be <= the policy's model.max_seq_len "
                f"({pre.config.max_seq_len})"
            )
        d = self.cfg.dpo
        log.info("dpo: policy and reference from %s; loss %s, beta %g", pre.source, d.loss, d.beta)
        return pre

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        d = self.cfg.dpo
        train, self.held, report = load_pairs(d, self.cfg.train.seed, tokenizer_for(Path(d.init_from)), log)
        log.info("dpo data: %s", report.summary())
        self.rows = ctx.rows
        policy = ctx.state["params"]
        if d.reference == "precomputed":
            ref = jax.jit(lambda p, s, b: sequence_logps(self.graphdef, p, s, b)[:2])
            for arrays in filter(None, (train, self.held)):
                outs = [
                    jax.device_get(ref(policy, ctx.state["model_state"], ctx.put(b)))
                    for b in fixed_batches(arrays, ctx.rows)
                ]
                n = len(arrays["chosen_inputs"])
                arrays["ref_chosen"] = np.concatenate([o[0] for o in outs])[:n].astype(np.float32)
                arrays["ref_rejected"] = np.concatenate([o[1] for o in outs])[:n].astype(np.float32)
            log.info("dpo: reference log-probs precomputed for %d pairs", len(train["chosen_inputs"]))
        else:  # a copy: the train step donates (and overwrites) the policy's buffers
            self.frozen = jax.tree.map(jnp.copy, policy)
        self.train_iter = shuffled_batches(
            train, ctx.rows, self.cfg.train.seed, jax.process_index(), jax.process_count()
        )

    def count(self, batch):
        return jnp.sum(_real(batch))

    def tokens(self, batch) -> int:
        return int(np.count_nonzero(batch["chosen_segment_ids"]) + np.count_nonzero(batch["rejected_segment_ids"]))

    def _per_pair(self, params, model_state, batch, rng=None):
        """-> (losses [P], per-pair metrics [P], aux_loss)."""
        pc, pr, n_c, n_r, aux_loss = sequence_logps(self.graphdef, params, model_state, batch, rng)
        if self.cfg.dpo.reference == "model":
            ref = jax.lax.stop_gradient(batch["frozen"])
            rc, rr, _, _, _ = sequence_logps(self.graphdef, ref, model_state, batch, rng)
        else:
            rc, rr = batch["ref_chosen"], batch["ref_rejected"]
        losses = pair_losses(pc, pr, rc, rr, self.cfg.dpo, n_c, n_r)
        return losses, pair_metrics(pc, pr, rc, rr, self.cfg.dpo.beta), aux_loss

    def loss_fn(self, params, model_state, batch, rng):
        losses, per_pair, aux_loss = self._per_pair(params, model_state, batch, rng)
        share = lambda x: jnp.sum(x * _real(batch)) / batch["denominator"]
        aux_loss = aux_loss / batch["n_micro"]
        loss = share(losses)
        return loss + aux_loss, {"loss": loss, "aux_loss": aux_loss, **{k: share(v) for k, v in per_pair.items()}}

    def eval_batches(self):
        return fixed_batches(self.held, self.rows) if self.held is not None else iter(())

    def eval_fn(self, params, model_state, batch):
        losses, per_pair, _ = self._per_pair(params, model_state, batch)
        real = _real(batch)
        return {"pairs": jnp.sum(real), **{k: jnp.sum(v * real) for k, v in {"loss": losses, **per_pair}.items()}}

    def eval_metrics(self, sums):
        n = max(sums.pop("pairs"), 1.0)
        return {k: v / n for k, v in sums.items()}
