"""Knowledge distillation (Hinton et al. 2015): a smaller student learns from a frozen teacher's logits.

Per target token, with p_T = softmax(logits / T) of teacher (t) and student (s):

    loss = alpha * T^2 * KL(p_T^t || p_T^s) + (1 - alpha) * CE(student logits, data token)

T^2 keeps the soft term's gradient scale independent of T (Hinton et al.). The KL is summed over the
vocabulary, the loss averaged over the global batch's real tokens, MoE aux losses of the student added
as in pretraining. The data and the batches are pretraining's (``Pretrain``): the student is
``model`` (seeded, or ``train.init_from``), the teacher ``distill.teacher`` (a run, checkpoint, export
or transformers folder), whose architecture is its own and whose tokenizer must be the data's: a
different tokenizer is refused (the two distributions would be over different vocabularies). The
teacher runs in the same step, under ``stop_gradient``, placed in the mesh's shardings like the
student. Evaluation: the student's held-out loss / perplexity / bits per byte and its KL to the teacher.

With ``distill.cache_teacher: true`` the teacher runs once, before training, over the batches the run
will see (``training/teacher_cache.py``); the step reads its top-k log-probabilities with the batch
(``teacher_ids``, ``teacher_logp`` [B,T,k], ``teacher_rest`` [B,T]) and the KL is over the top k and
the rest (``cached_kl``: exact when k >= V). The teacher then holds no device memory while training.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import MODEL_RUNTIME_KEYS, ConfigError
from open_r1_jax.model import build_model, merge_model
from open_r1_jax.parallel.mesh import logical_axes, parse_rules, tree_shardings
from open_r1_jax.training.losses import lm_metrics, token_nll
from open_r1_jax.training.metrics import active_matmul_params
from open_r1_jax.training.stages.base import StageContext
from open_r1_jax.training.stages.pretrain import Pretrain, check_tokenizer
from open_r1_jax.training.teacher_cache import TeacherCache, rest_logmass

log = logging.getLogger("open_r1_jax")


def distill_token_losses(student_logits, teacher_logits, targets, alpha: float, temperature: float):
    """[B,T,V] logits (fp32) and targets [B,T] -> (loss, kl, ce) per token [B,T]."""
    t = temperature
    log_ps = jax.nn.log_softmax(student_logits / t, axis=-1)
    log_pt = jax.nn.log_softmax(teacher_logits / t, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return mix(kl, token_nll(student_logits, targets), alpha, t)


def mix(kl, ce, alpha: float, temperature: float):
    """Per-token KL and CE [B,T] -> (alpha T^2 kl + (1 - alpha) ce, kl, ce)."""
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce


def cached_kl(student_logits, ids, logp_t, rest_t, temperature: float):
    """KL(teacher_T || student_T) over the teacher's top k tokens ``ids`` [B,T,k] (their log-probs
    ``logp_t``) and one outcome for all others (``rest_t`` [B,T], log of its mass) -> [B,T]."""
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(logp_t) * (logp_t - jnp.take_along_axis(log_q, ids, axis=-1)), axis=-1)
    if ids.shape[-1] >= log_q.shape[-1]:  # every token kept: the rest is empty
        return kl
    some = rest_t > -jnp.inf  # a teacher whose top k hold all its mass adds nothing (0 log 0 = 0)
    rest = jnp.where(some, rest_t, 0.0)
    return kl + jnp.where(some, jnp.exp(rest) * (rest - rest_logmass(log_q, ids)), 0.0)


class Distill(Pretrain):
    name = "distill"

    def initial_weights(self):
        """The student's weights (``train.init_from``, or None: seeded) and, first, the teacher."""
        from open_r1_jax.pretrained import load_pretrained

        d, t, m = self.cfg.distill, self.cfg.train, self.cfg.model
        check_tokenizer(d.teacher, self.cfg.data, "distill.teacher")
        teacher = load_pretrained(d.teacher)
        tc = dataclasses.replace(teacher.config, **{k: getattr(m, k) for k in MODEL_RUNTIME_KEYS})
        if t.seq_len > tc.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({t.seq_len}) must be <= the teacher's model.max_seq_len "
                f"({tc.max_seq_len}, {d.teacher})"
            )
        pre = super().initial_weights()  # may replace self.cfg.model with train.init_from's architecture
        if self.cfg.model.vocab_size != tc.vocab_size:
            raise ConfigError(
                f"model.vocab_size ({self.cfg.model.vocab_size}) must equal the teacher's ({tc.vocab_size}, "
                f"{d.teacher}): the KL compares distributions over the same tokens"
            )
        if d.cache_teacher and d.cache_top_k < 1:
            raise ConfigError(f"distill.cache_top_k: got {d.cache_top_k}; accepted: an integer >= 1")
        self.teacher, self.teacher_config, self.teacher_step = teacher, tc, teacher.step
        student, teacher_active = active_matmul_params(self.cfg.model), active_matmul_params(tc)
        log.info(
            "distill: teacher %r, %.2fM active matmul parameters per token; student %.2fM (%.0f%%); "
            "alpha %g, temperature %g",
            teacher,
            teacher_active / 1e6,
            student / 1e6,
            100 * student / teacher_active,
            d.alpha,
            d.temperature,
        )
        return pre

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        abstract = nnx.eval_shape(lambda: build_model(self.teacher_config, 0))
        self.teacher_graphdef = nnx.split(abstract, nnx.Param, ...)[0]
        axes_params, axes_rest = logical_axes(abstract)
        rules = parse_rules(self.cfg.mesh.rules)
        weights = {"params": self.teacher.params, "model_state": self.teacher.model_state}
        shardings = {
            "params": tree_shardings(weights["params"], axes_params, ctx.mesh, rules),
            "model_state": tree_shardings(weights["model_state"], axes_rest, ctx.mesh, rules),
        }
        self.frozen = jax.device_put(weights, shardings)
        self.teacher = None  # the host copy is not needed any more
        self.cache = None
        if self.cfg.distill.cache_teacher:
            self.cache = TeacherCache.open_or_build(self, ctx)
            self.train_iter = self.cache.wrap(self.train_iter)
            self.frozen = None  # training reads the cache: the teacher's weights leave the devices

    def teacher_forward(self, frozen, batch, rng=None):
        """The frozen teacher's logits [B,T,V] for a batch (``rng``: LSH rotations)."""
        teacher = jax.lax.stop_gradient(frozen)
        model = merge_model(self.teacher_graphdef, teacher["params"], teacher["model_state"])
        return model(batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng)[0]

    def plain_eval_batches(self):
        """The held-out batches without the teacher's cached arrays."""
        return super().eval_batches()

    def eval_batches(self):
        for i, batch in enumerate(super().eval_batches()):
            yield batch if self.cache is None else {**batch, **self.cache.entry("eval", i, batch)}

    def _losses(self, params, model_state, batch, rng=None):
        """-> (loss, kl, ce) per token [B,T], mask [B,T], the student's aux outputs."""
        logits, aux = self._forward(params, model_state, batch, rng)
        d, mask = self.cfg.distill, (batch["segment_ids"] > 0).astype(jnp.float32)
        if "teacher_ids" in batch:  # distill.cache_teacher
            kl = cached_kl(logits, batch["teacher_ids"], batch["teacher_logp"], batch["teacher_rest"], d.temperature)
            return mix(kl, token_nll(logits, batch["targets"]), d.alpha, d.temperature), mask, aux
        t_logits = self.teacher_forward(batch["frozen"], batch, rng)
        return distill_token_losses(logits, t_logits, batch["targets"], d.alpha, d.temperature), mask, aux

    def loss_fn(self, params, model_state, batch, rng):
        (loss, kl, ce), mask, aux = self._losses(params, model_state, batch, rng)
        share = lambda x: jnp.sum(x * mask) / batch["denominator"]
        return self.with_aux({"loss": share(loss), "kl": share(kl), "ce": share(ce)}, aux, batch)

    def eval_fn(self, params, model_state, batch):
        (_, kl, ce), mask, _ = self._losses(params, model_state, batch)
        n_bytes = self.target_bytes(batch, mask > 0)
        return {"nll": jnp.sum(ce * mask), "kl": jnp.sum(kl * mask), "tokens": jnp.sum(mask), "bytes": n_bytes}

    def eval_metrics(self, sums):
        out = lm_metrics(sums)
        return {**out, "kl": sums["kl"] / sums["tokens"]} if out else out

    def describe(self) -> str:
        d = self.cfg.distill
        return f"distill from {d.teacher}" + (f" (cached top-{d.cache_top_k})" if d.cache_teacher else "")
