"""Mesh from the config and placement of batches and state.

Axes: ``data``, ``fsdp``, ``expert``. The batch is split over all three (outside MoE blocks every
axis is a batch axis). The state is replicated here; FSDP and expert sharding of parameters come
from logical-axis rules (open issue "Parallelism").
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from open_r1_jax.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "expert")
BATCH_AXES = AXES


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = (cfg.data, cfg.fsdp, cfg.expert)
    need = int(np.prod(shape))
    if need != len(devices):
        raise ConfigError(
            f"mesh.data x mesh.fsdp x mesh.expert = {cfg.data} x {cfg.fsdp} x {cfg.expert} = {need}, "
            f"but {len(devices)} devices are visible ({devices[0].platform}); accepted: sizes whose "
            f"product is {len(devices)}")
    return Mesh(np.array(devices).reshape(shape), AXES)


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
            f"(data x fsdp x expert)")
