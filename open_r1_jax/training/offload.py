"""``train.offload``: the train state's optimizer moments (and, with ``optimizer_and_params``, the fp32
parameters) live in host memory between steps, as ZeRO-Offload keeps them.

JAX places arrays by memory kind: a sharding ``with_memory_kind("pinned_host")`` keeps each device's
shard in page-locked host memory (present on CPU too, so the code paths are tested here). The train
step moves the offloaded parts to the device at its start (``jax.device_put`` inside the jitted step:
host-to-device copies XLA schedules), runs the unchanged step there, and its outputs go back to host
memory (the step's ``out_shardings``). The arithmetic is the step's own, so offload changes where
bytes live, not a single bit of the result (tests/test_offload.py).

Where the update runs: on the device. The alternative, the AdamW update on the host CPU (ZeRO-Offload's
choice on GPUs, JAX's ``compute_on("device_host")``), saves the moments' round trip but runs a
bandwidth-bound update on the host's cores; on this CPU-only machine both places are the same
memory, so the choice could not be measured here (see benchmarks/offload.py for what was).

With ``optimizer_and_params`` the device holds no train state between steps but the model state
(router biases): the parameters travel host -> device at each step (and at each evaluation or
generation the stages do), and back after the update. No compute-dtype copy is kept on the device.
"""

from __future__ import annotations

import jax

HOST = "pinned_host"
OFFLOADED = {"none": (), "optimizer": ("opt_state",), "optimizer_and_params": ("opt_state", "params")}


def offload_shardings(shardings: dict, mode: str) -> dict:
    """The state's shardings with the entries ``mode`` offloads in host memory."""
    out = dict(shardings)
    for key in OFFLOADED[mode]:
        out[key] = jax.tree.map(lambda s: s.with_memory_kind(HOST), shardings[key])
    return out


def on_device(shardings):
    """The same shardings in device memory."""
    return jax.tree.map(lambda s: s.with_memory_kind("device"), shardings)


def offloaded_step(step, shardings: dict, mode: str):
    """``step(state, ...)`` whose offloaded state comes from host memory and returns there."""
    if mode == "none":
        return step
    keys = OFFLOADED[mode]

    def run(state, *args):
        state = {k: jax.device_put(v, on_device(shardings[k])) if k in keys else v for k, v in state.items()}
        new, metrics = step(state, *args)
        return {k: jax.device_put(v, shardings[k]) if k in keys else v for k, v in new.items()}, metrics

    return run


def resident_bytes(state: dict) -> tuple[int, int]:
    """-> (bytes in device memory, bytes in host memory) of the first local device's shards."""
    from open_r1_jax.parallel.mesh import per_device_bytes

    leaves = jax.tree.leaves(state)
    host = [x for x in leaves if x.sharding.memory_kind == HOST]
    return per_device_bytes([x for x in leaves if x.sharding.memory_kind != HOST]), per_device_bytes(host)
