"""The one jitted train step of every stage, over a dict train state.

State: ``{"step", "params", "model_state", "opt_state", "loss_scale", "good_steps", "skipped",
"nonfinite_step"}``; ``params`` and ``model_state`` (router biases) are nested pure dicts that
``open_r1_jax.model.merge_model`` turns back into the model inside the stage's loss.

Exact accumulation: the global batch [G,...] is split into M micro-batches scanned in one step. The
stage's ``count(batch)`` gives the global batch's denominator (valid tokens for language modelling,
real pairs for DPO); every micro-batch's loss is its share of the global objective (its sum of unit
losses / the denominator), so the accumulated gradient equals that of one big batch. MoE auxiliary
losses are batch statistics: each micro-batch adds aux_loss / M (as Megatron does), which is not
identical to one big batch. Metrics are shares too, so they are summed over micro-batches.

float16: the loss is multiplied by a dynamic scale; a step whose gradients are not finite is skipped
(parameters, optimiser and router biases unchanged), counted, and halves the scale; the scale doubles
after ``loss_scale_period`` finite steps. In every dtype a non-finite loss or gradient leaves the
state unchanged and records the first such step in ``nonfinite_step``; the Trainer stops the run there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.experimental.compute_on import compute_on

from open_r1_jax.config import Config
from open_r1_jax.model import lora, routing

Batch = dict[str, jax.Array]


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


def split_micro(batch: Batch, n_micro: int) -> Batch:
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


def _keep(finite: jax.Array, new, old):
    """``new`` after a finite step, else ``old`` (leaf by leaf)."""
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def mask_frozen(grads: dict, trainable) -> dict:
    """Zero the gradients of frozen parameters (``trainable``: a tree of bools like ``grads``, or None)."""
    if trainable is None:
        return grads
    return jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)


def model_params(params: dict, cfg: Config) -> dict:
    """What the stages' losses see: the model's params, with LoRA adapters (if any) folded in."""
    return lora.fold(params, lora.scale(cfg.lora)) if lora.KEY in params else params


def make_grad_fn(stage, cfg: Config) -> Callable:
    """-> fn(params, model_state, batch, frozen, rng, scale) -> (summed grads, summed metrics).

    The gradient of the global objective (times ``scale``), accumulated over the micro-batches of
    ``batch``; the metrics are the stage's, summed over micro-batches (so means over the global batch).
    Only the leaves the stage trains (``stage.trainable``) are differentiated and accumulated, so a
    LoRA step computes no weight gradient of the frozen base; frozen leaves get zero gradients.
    """
    t = cfg.train
    n_micro = t.global_batch // (t.micro_batch or t.global_batch)

    def grad_fn(params, model_state, batch, frozen, rng, scale):
        leaves, treedef = jax.tree.flatten(params)
        mask = stage.trainable(params)
        keep = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
        train_leaves = [x for x, k in zip(leaves, keep) if k]
        frozen_leaves = [x for x, k in zip(leaves, keep) if not k]

        def layout(tr, fr):  # the two lists of leaves -> the params tree
            it_t, it_f = iter(tr), iter(fr)
            return jax.tree.unflatten(treedef, [next(it_t) if k else next(it_f) for k in keep])

        def scaled_loss(train_leaves, mb, rng):
            loss, metrics = stage.loss_fn(model_params(layout(train_leaves, frozen_leaves), cfg), model_state, mb, rng)
            return loss * scale, metrics

        grad = jax.value_and_grad(scaled_loss, has_aux=True)

        extras = {
            "denominator": jnp.maximum(stage.count(batch), 1.0),
            "n_micro": jnp.asarray(n_micro, jnp.float32),
            "frozen": frozen,
        }
        micro = split_micro(batch, n_micro)
        args = lambda mb, r: (train_leaves, {**mb, **extras}, r)

        def body(carry, xs):
            mb, i = xs
            (_, metrics), g = grad(*args(mb, jax.random.fold_in(rng, i)))
            return jax.tree.map(jnp.add, carry, (g, metrics)), None

        first = jax.tree.map(lambda x: x[0], micro)
        if n_micro == 1:  # no loop: XLA sees the whole step (a scan of one adds copies of its carry)
            (_, metrics), grads = grad(*args(first, jax.random.fold_in(rng, 0)))
        else:
            # the scan's carry starts at zeros shaped like (grads, metrics): one abstract trace, no compute
            shapes = jax.eval_shape(lambda mb: grad(*args(mb, rng)), first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0][1]))
            (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(n_micro)))
        return layout(grads, [jnp.zeros_like(x) for x in frozen_leaves]), metrics

    return grad_fn


def make_train_step(stage, tx: optax.GradientTransformation, cfg: Config, return_grads: bool = False) -> Callable:
    """-> step(state, batch, frozen=None) -> (state, metrics), for the stage's loss (see stages/base.py);
    with ``train.offload_dir`` -> (state, metrics, gradient), the parameters not yet updated.

    ``frozen``: the stage's weights that are read but never trained (a DPO reference model), passed as
    an argument so that they are not baked into the compiled step as constants. ``return_grads``: add
    the accumulated gradient (before clipping) to the metrics as ``grads`` (equivalence tests).
    """
    t = cfg.train
    fp16 = cfg.model.dtype == "float16"
    grad_fn = make_grad_fn(stage, cfg)

    offload = cfg.train.offload
    # train.offload_dir: the step returns the gradient, and DiskMoments.update clips it and streams
    # the moments from disk through AdamW afterwards (training/disk_offload.py)
    on_disk = bool(cfg.train.offload_dir)

    @jax.jit  # a computation of its own: with train.offload it runs on the host (compute_on)
    def update(grads, opt_state, params, finite):
        """AdamW on the accumulated gradient; a non-finite step keeps the old parameters and moments.
        A conditional, not a select per leaf: the selects kept the old parameters and moments alive
        beside the new ones, and XLA:CPU copied them (on a host split in two, 302 copies in the
        baby-GPT step against 125; the step is 7-20% faster with the conditional)."""

        def apply(grads, opt_state, params):
            updates, new_opt = tx.update(grads, opt_state, params)
            new = optax.apply_updates(params, updates), new_opt
            # in host memory (train.offload) optax's new step count is made in device memory; the
            # branches must agree, so each new leaf goes where its old one is
            space = lambda x: jax.typeof(x).memory_space
            return jax.tree.map(
                lambda n, o: n if space(n) == space(o) else jax.device_put(n, space(o)), new, (params, opt_state)
            )

        keep_old = lambda grads, opt_state, params: (params, opt_state)
        return jax.lax.cond(finite, apply, keep_old, grads, opt_state, params)

    def train_step(state: dict, batch: Batch, frozen=None):
        params, model_state, scale = state["params"], state["model_state"], state["loss_scale"]
        # fresh randomness (LSH rotations) per step, and per micro-batch inside grad_fn
        rng = jax.random.fold_in(jax.random.key(t.seed), state["step"])
        # optimizer_and_params: the forward and backward passes read a device copy of the host's
        # parameters; the update below reads the host's own (training/offload.py)
        on_device = jax.device_put(params, jax.memory.Space.Device) if offload == "optimizer_and_params" else params
        grads, metrics = grad_fn(on_device, model_state, batch, frozen, rng, scale)
        with jax.named_scope("optimizer"):
            grads = mask_frozen(jax.tree.map(lambda g: g / scale, grads), stage.trainable(params))
            grad_norm = optax.tree.norm(grads)
            loss = metrics["loss"]
            finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
            if on_disk:
                new_params, new_opt = params, state["opt_state"]
            elif offload == "none":
                new_params, new_opt = update(grads, state["opt_state"], params, finite)
            else:  # the update runs in host memory, beside the moments (training/offload.py)
                host = lambda tree: jax.device_put(tree, jax.memory.Space.Host)
                with compute_on("device_host"):
                    new_params, new_opt = update(host(grads), state["opt_state"], host(params), host(finite))
                if offload == "optimizer":  # the parameters live on the device
                    new_params = jax.device_put(new_params, jax.memory.Space.Device)
        new_model_state = model_state
        if stage.updates_router_bias and "expert_counts" in metrics:
            new_model_state = update_router_biases(model_state, metrics["expert_counts"], cfg)
        new_state = {
            "step": state["step"] + 1,
            "params": new_params,
            "model_state": _keep(finite, new_model_state, model_state),
            "opt_state": new_opt,
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        }
        # float16: overflowing gradients are expected (the scale halves); only a non-finite loss stops
        diverged = ~jnp.isfinite(loss) if fp16 else ~finite
        if fp16:
            good = jnp.where(finite, state["good_steps"] + 1, 0)
            grow = good >= t.loss_scale_period
            new_state["loss_scale"] = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
            new_state["good_steps"] = jnp.where(grow, 0, good)
        else:
            new_state["loss_scale"], new_state["good_steps"] = scale, state["good_steps"]
        new_state["nonfinite_step"] = jnp.where(
            (state["nonfinite_step"] < 0) & diverged, state["step"], state["nonfinite_step"]
        )
        metrics = {**metrics, "grad_norm": grad_norm, "finite": finite}
        metrics = {**metrics, "grads": grads} if return_grads else metrics
        return (new_state, metrics, grads) if on_disk else (new_state, metrics)

    return train_step
