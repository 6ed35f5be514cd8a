"""Creation of the train state directly in its shardings (the model is never whole on one device).

The model is first built abstractly (``nnx.eval_shape``) to read its logical axis names; then one
jitted function builds the parameters and the optimizer state with ``out_shardings`` from
``mesh.rules``, so each device materialises only its shards. With LoRA (``lora.rank`` > 0) the params also hold the
adapters (``params["lora"]``, ``model/lora.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from open_r1_jax.config import Config
from open_r1_jax.model import build_model, lora, split_model
from open_r1_jax.parallel.mesh import logical_axes, parse_rules, state_shardings, tree_shardings
from open_r1_jax.training.offload import offload_shardings
from open_r1_jax.training.step import init_state


def create_train_state(cfg: Config, tx: optax.GradientTransformation, mesh: Mesh, build: Callable | None = None):
    """-> (graphdef, state, shardings of the state). The model is built for the mesh's expert axis
    (its MoE layers exchange tokens over it); ``build(model_cfg, seed, expert_parallel)``. With
    ``train.offload_dir`` the state's ``opt_state`` is empty (the moments are on disk) and
    ``shardings["opt_state"]`` places the moments' tree when a checkpoint is written or read."""
    build = build or build_model  # looked up at call time (tests replace it)
    ep = dict(mesh.shape).get("expert", 1)
    abstract_model = nnx.eval_shape(lambda: build(cfg.model, cfg.train.seed, ep))
    axes_params, axes_rest = logical_axes(abstract_model)
    graphdef, _, _ = split_model(abstract_model)
    paths = lora.target_paths(cfg.model, cfg.lora) if cfg.lora.rank else []
    if paths:  # LoRA: the adapters are params["lora"], sharded along their matrix's axes
        axes_params = {**axes_params, lora.KEY: lora.axes(axes_params, paths)}

    def weights():
        _, params, rest = split_model(build(cfg.model, cfg.train.seed, ep))
        if paths:
            params = {**params, lora.KEY: lora.init(params, paths, cfg.lora.rank, jax.random.key(cfg.lora.seed))}
        return params, rest

    abs_params, abs_rest = jax.eval_shape(weights)
    rules = parse_rules(cfg.mesh.rules)
    param_sh = tree_shardings(abs_params, axes_params, mesh, rules)
    rest_sh = tree_shardings(abs_rest, axes_rest, mesh, rules)

    def init():
        return init_state(*weights(), tx, cfg)

    shardings = offload_shardings(state_shardings(jax.eval_shape(init), param_sh, rest_sh, mesh), cfg.train.offload)
    if cfg.train.offload_dir:  # the moments live on disk (training/disk_offload.py): none in memory
        on_disk = lambda: {**init(), "opt_state": ()}
        state = jax.jit(on_disk, out_shardings={**shardings, "opt_state": ()})()
        return graphdef, state, shardings  # shardings["opt_state"]: the moments' tree, for checkpoints
    state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state, shardings
