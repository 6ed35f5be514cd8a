"""Mesh from the config, logical-axis rules, and placement of batches and train state.

Axes: ``data``, ``fsdp``, ``expert``. The batch is split over all three (outside MoE blocks every
axis is a batch axis). Parameters carry logical axis names (``embed``, ``mlp``, ``heads``,
``kv_heads``, ``experts``, ``vocab``); ``mesh.rules`` maps them to mesh axes, by default
``embed -> fsdp`` (ZeRO-3: every matrix is split along its model-width dimension over ``fsdp``; XLA
all-gathers it where it is used and reduce-scatters its gradient) and ``experts -> expert``.
Optimizer moments take the sharding of their parameter, so parameters, gradients and optimizer
state are all sharded. A dimension that the mesh axes do not divide stays replicated.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from open_r1_jax.config import ConfigError, MeshConfig
from open_r1_jax.parallel.distributed import multi_process_env

AXES = ("data", "fsdp", "expert")
BATCH_AXES = AXES
log = logging.getLogger("open_r1_jax")


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def split_cpu_host(cfg: MeshConfig, batch: int) -> int:
    """Split this CPU host into ``mesh.cpu_devices`` XLA devices before JAX starts; -> the count (1 = none).

    XLA:CPU runs most elementwise fusions on one thread, so a one-device step of a small dense model
    leaves cores idle between matmuls; with one device per core and the batch on ``mesh.data`` the
    devices' programs run side by side (baby-GPT step 1.53x faster on 2 cores). The MoE configs
    measured lose (tiny.yaml 0.88x, small_cpu.yaml 0.79x), hence opt-in (``benchmarks/cpu_devices.py``).
    Only where nothing else chose the devices: no mesh set, no fake device count in ``XLA_FLAGS`` or
    ``jax_num_cpu_devices``, one process, JAX not yet started. The count is the largest that divides
    ``batch`` (rows per micro-batch) and is at most ``mesh.cpu_devices`` (0 = the cores this process
    may use). It only sizes the CPU backend: on a GPU machine JAX's devices are the GPUs and
    ``make_mesh`` ignores it.
    """
    from jax._src import xla_bridge

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    most = cfg.cpu_devices or cores
    chosen_elsewhere = (
        cfg.data * cfg.fsdp * cfg.expert != 1
        or DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", "")
        or jax.config.jax_num_cpu_devices != -1
        or multi_process_env()
        or xla_bridge.backends_are_initialized()
    )
    if most <= 1 or chosen_elsewhere:
        return 1
    n = max(d for d in range(1, min(most, batch) + 1) if batch % d == 0)
    if n > 1:
        jax.config.update("jax_num_cpu_devices", n)
    return n


def _split_host_size(cfg: MeshConfig, devices: list) -> int:
    """Devices of a host that ``split_cpu_host`` split (they all go on ``data``), else 1."""
    auto = jax.config.jax_num_cpu_devices
    unset = cfg.data * cfg.fsdp * cfg.expert == 1 and cfg.cpu_devices != 1
    if unset and devices[0].platform == "cpu" and jax.process_count() == 1 and auto == len(devices) > 1:
        return auto
    return 1


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = (cfg.data * _split_host_size(cfg, devices), cfg.fsdp, cfg.expert)
    need = int(np.prod(shape))
    if need != len(devices):
        raise ConfigError(
            f"mesh.data x mesh.fsdp x mesh.expert = {cfg.data} x {cfg.fsdp} x {cfg.expert} = {need}, "
            f"but {len(devices)} devices are visible ({devices[0].platform}); accepted: sizes whose "
            f"product is {len(devices)}"
        )
    return Mesh(np.array(devices).reshape(shape), AXES)


def parse_rules(rules: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out = {}
    for rule in rules:
        name, _, axes = rule.partition("=")
        out[name.strip()] = tuple(a for a in axes.split("+") if a)
    return out


def logical_spec(axes: tuple | None, shape: tuple[int, ...], rules: dict, mesh: Mesh) -> P:
    """Logical axis names of one array -> PartitionSpec under ``rules`` (non-dividing dims replicated)."""
    if not axes:
        return P()
    spec, used = [], set()
    for name, dim in zip(axes, shape):
        mesh_axes = tuple(a for a in rules.get(name, ()) if mesh.shape[a] > 1 and a not in used)
        size = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if mesh_axes and dim % size == 0:
            spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
            used.update(mesh_axes)
        else:
            spec.append(None)
    return P(*spec)


def logical_axes(model) -> tuple[dict, dict]:
    """-> (axes of params, axes of the other state): pure dicts shaped like ``split_model``'s output,
    with each leaf the tuple of logical axis names of that array."""
    from open_r1_jax.name_map import unflatten

    def axes_of(state):
        return unflatten(
            {
                tuple(str(k) if not isinstance(k, int) else k for k in path): v.get_metadata().get("axes")
                for path, v in nnx.to_flat_state(state)
            }
        )

    return axes_of(nnx.state(model, nnx.Param)), axes_of(nnx.state(model, nnx.Not(nnx.Param)))


def tree_shardings(values: dict, axes: dict, mesh: Mesh, rules: dict) -> dict:
    return jax.tree.map(
        lambda ax, v: NamedSharding(mesh, logical_spec(ax, np.shape(v), rules, mesh)),
        axes,
        values,
        is_leaf=lambda x: x is None or isinstance(x, tuple),
    )


def state_shardings(state: dict, param_shardings: dict, rest_shardings: dict, mesh: Mesh) -> dict:
    """Shardings of the whole train state: optimizer moments follow their parameter, scalars replicate."""
    rep = NamedSharding(mesh, P())
    params_def = jax.tree.structure(state["params"])

    def follow(sub):
        # optax keeps moments as trees shaped like the params (mu, nu); everything else is small
        if isinstance(sub, dict) and jax.tree.structure(sub) == params_def:
            return param_shardings
        if isinstance(sub, (tuple, list)) and not hasattr(sub, "_fields"):
            return type(sub)(follow(s) for s in sub)
        if hasattr(sub, "_fields"):  # NamedTuple states
            return type(sub)(*(follow(getattr(sub, f)) for f in sub._fields))
        return jax.tree.map(lambda _: rep, sub)

    out = {k: jax.tree.map(lambda _: rep, v) for k, v in state.items()}
    out["params"], out["model_state"] = param_shardings, rest_shardings
    out["opt_state"] = follow(state["opt_state"])
    return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(global_batch: int, micro_batch: int, mesh: Mesh) -> None:
    n = mesh.size
    mb = micro_batch or global_batch
    if mb % n:
        raise ConfigError(
            f"train.micro_batch ({mb}) must be divisible by the {n} devices of the data-like mesh axes "
            f"(data x fsdp x expert = {dict(mesh.shape)}); accepted: a multiple of {n}"
        )


def per_device_bytes(tree: Any) -> int:
    """Bytes that device 0 holds of a tree of (possibly sharded) arrays."""
    dev = jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", []):
            if shard.device == dev:
                total += shard.data.nbytes
    return total
