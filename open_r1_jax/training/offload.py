"""``train.offload``: the train state's optimizer moments (and, with ``optimizer_and_params``, the fp32
parameters) live in host memory between steps, as ZeRO-Offload keeps them.

JAX places arrays by memory kind: a sharding ``with_memory_kind("pinned_host")`` keeps each device's
shard in page-locked host memory (present on CPU too, so the code paths are tested here).

Where the update runs: on the host, beside the moments, as ZeRO-Offload does. The step computes the
gradients on the device, copies them and the parameters to host memory, and runs the AdamW update
there (``compute_on("device_host")``, training/step.py); the new parameters go back to the device
(``optimizer``) or stay on the host (``optimizer_and_params``). The moments never come to the
device, so its peak holds parameters, gradients and activations only. Each step moves 12 bytes per
parameter with ``optimizer`` (gradients and parameters to the host, parameters back) and 8 with
``optimizer_and_params`` (parameters to the device, gradients to the host), against the moments'
16 both ways for an update on the device. The
price is an update on the host's cores (bandwidth-bound, one pass over 16 bytes per parameter). On
this CPU-only machine both memory kinds are the same RAM and the host is the device, so that price
could not be measured here (benchmarks/offload.py gives what was).

With ``optimizer_and_params`` the fp32 parameters also live on the host: the step copies them to the
device for its forward and backward passes and updates the host's own (training/step.py), and the
Trainer copies them for each evaluation or generation the stages do (``Trainer.view``). No
compute-dtype copy is kept on the device between steps.

The arithmetic is the step's own: on CPU offload changes where bytes live and where the update runs,
not one bit of the result (tests/test_offload.py); on a GPU the host's AdamW may round differently.
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


def resident_bytes(state: dict) -> tuple[int, int]:
    """-> (bytes in device memory, bytes in host memory) of the first local device's shards."""
    from open_r1_jax.parallel.mesh import per_device_bytes

    leaves = jax.tree.leaves(state)
    host = [x for x in leaves if x.sharding.memory_kind == HOST]
    return per_device_bytes([x for x in leaves if x.sharding.memory_kind != HOST]), per_device_bytes(host)
