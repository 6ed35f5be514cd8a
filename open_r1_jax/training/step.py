"""Pure, jitted train and eval steps over a dict train state.

State: ``{"step", "params", "model_state", "opt_state", "loss_scale", "good_steps", "skipped",
"nonfinite_step"}``; ``params`` and ``model_state`` (router biases) are nested pure dicts that
``nnx.merge`` turns back into the model inside the step.

Exact accumulation: the global batch [G,T] is split into M micro-batches scanned in one step. Each
micro-batch contributes grad(sum of its token NLL / total valid tokens of the global batch), so the
accumulated gradient equals that of one big batch. MoE auxiliary losses are batch statistics: each
micro-batch adds aux_loss / M (as Megatron does), which is not identical to one big batch.

float16: the loss is multiplied by a dynamic scale; a step whose gradients are not finite is skipped
(parameters, optimiser and router biases unchanged), counted, and halves the scale; the scale doubles
after ``loss_scale_period`` finite steps. In every dtype a non-finite loss or gradient leaves the
state unchanged and records the first such step in ``nonfinite_step``; the loop stops the run there.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from open_r1_jax.config import Config
from open_r1_jax.model import routing
from open_r1_jax.training.losses import summed_nll

Batch = dict[str, jax.Array]


def split_model(model) -> tuple[Any, dict, dict]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_model(graphdef, params: dict, model_state: dict):
    return nnx.merge(graphdef, nnx.State(params), nnx.State(model_state))


def init_state(params: dict, model_state: dict, tx: optax.GradientTransformation, cfg: Config) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "model_state": model_state,
        "opt_state": tx.init(params),
        "loss_scale": jnp.asarray(cfg.train.loss_scale if cfg.model.dtype == "float16" else 1.0, jnp.float32),
        "good_steps": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
        "nonfinite_step": jnp.full((), -1, jnp.int32),
    }


def _micro(batch: Batch, n_micro: int) -> Batch:
    """[G,...] -> [M, G/M, ...]; micro-batch i takes rows i, i+M, i+2M, ... (strided), so that the
    batch axis keeps its device sharding (rows are laid out contiguously over devices)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n_micro, n_micro, *x.shape[1:]).swapaxes(0, 1), batch)


def update_router_biases(model_state: dict, counts: jax.Array, cfg: Config) -> dict:
    """Apply the DeepSeek-V3 bias update to every MoE layer's router bias. counts [L,E], global batch."""
    moe = cfg.model.moe
    if moe.router != "sigmoid" or moe.bias_update_rate == 0:
        return model_state
    blocks = dict(model_state["blocks"])
    for j, i in enumerate(range(cfg.model.drn_layers, cfg.model.n_layers)):
        ffn = dict(blocks[i]["ffn"])
        ffn["router_bias"] = routing.bias_update(ffn["router_bias"], counts[j], moe.bias_update_rate)
        blocks[i] = {**blocks[i], "ffn": ffn}
    return {**model_state, "blocks": blocks}


def make_train_step(graphdef, tx: optax.GradientTransformation, cfg: Config):
    t = cfg.train
    n_micro = t.global_batch // (t.micro_batch or t.global_batch)
    fp16 = cfg.model.dtype == "float16"
    has_lsh = cfg.model.attention.kind == "lsh" or bool(cfg.model.attention.lsh_layers)

    def loss_fn(params, model_state, mb, n_total, scale, rng):
        model = merge_model(graphdef, params, model_state)
        if has_lsh:  # fresh LSH rotations per step and micro-batch; reused by the backward pass
            logits, aux = model(mb["inputs"], mb["positions"], mb["segment_ids"], rng=rng)
        else:
            logits, aux = model(mb["inputs"], mb["positions"], mb["segment_ids"])
        nll, n_tok = summed_nll(logits, mb["targets"], mb["segment_ids"] > 0)
        loss = nll / n_total + aux["aux_loss"] / n_micro
        return loss * scale, (nll, n_tok, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict, batch: Batch):
        params, model_state, scale = state["params"], state["model_state"], state["loss_scale"]
        n_total = jnp.maximum(jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32)), 1.0)
        step_rng = jax.random.fold_in(jax.random.key(t.seed), state["step"]) if has_lsh else None

        def body(carry, xs):
            grads, nll, aux_sum, counts, dropped = carry
            mb, i = xs
            rng = jax.random.fold_in(step_rng, i) if has_lsh else None
            (_, (mb_nll, _, aux)), g = grad_fn(params, model_state, mb, n_total, scale, rng)
            grads = jax.tree.map(jnp.add, grads, g)
            if "expert_counts" in aux:
                counts, dropped = counts + aux["expert_counts"], dropped + jnp.sum(aux["dropped"])
            return (grads, nll + mb_nll, aux_sum + aux["aux_loss"], counts, dropped), None

        n_moe = cfg.model.n_layers - cfg.model.drn_layers
        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()),
                 jnp.zeros((n_moe, cfg.model.moe.n_experts)), jnp.zeros((), jnp.int32))
        xs = (_micro(batch, n_micro), jnp.arange(n_micro))
        (grads, nll, aux_sum, counts, dropped), _ = jax.lax.scan(body, zeros, xs)
        grads = jax.tree.map(lambda g: g / scale, grads)
        grad_norm = optax.tree.norm(grads)
        loss = nll / n_total
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_model_state = update_router_biases(model_state, counts, cfg)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "model_state": keep(new_model_state, model_state),
            "opt_state": keep(new_opt, state["opt_state"]),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        }
        if fp16:
            good = jnp.where(finite, state["good_steps"] + 1, 0)
            grow = good >= t.loss_scale_period
            new_state["loss_scale"] = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
            new_state["good_steps"] = jnp.where(grow, 0, good)
            new_state["nonfinite_step"] = jnp.where(
                (state["nonfinite_step"] < 0) & ~jnp.isfinite(loss), state["step"], state["nonfinite_step"])
        else:
            new_state["loss_scale"], new_state["good_steps"] = scale, state["good_steps"]
            new_state["nonfinite_step"] = jnp.where(
                (state["nonfinite_step"] < 0) & ~finite, state["step"], state["nonfinite_step"])
        metrics = {"loss": loss, "aux_loss": aux_sum / n_micro, "grad_norm": grad_norm,
                   "tokens": n_total, "expert_counts": counts, "dropped": dropped, "finite": finite}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef, token_bytes: jax.Array):
    """-> fn(params, model_state, batch) -> (sum NLL, valid tokens, UTF-8 bytes of the targets)."""

    def eval_step(params, model_state, batch):
        model = merge_model(graphdef, params, model_state)
        logits, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
        mask = batch["segment_ids"] > 0
        nll, n_tok = summed_nll(logits, batch["targets"], mask)
        n_bytes = jnp.sum(jnp.where(mask, token_bytes[batch["targets"]], 0).astype(jnp.float32))
        return nll, n_tok, n_bytes

    return eval_step
