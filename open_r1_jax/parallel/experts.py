"""Expert parallelism: the routed experts of an MoE layer sharded over the ``expert`` mesh axis.

Legend: N tokens (global), Nl tokens on one device, A active experts per token, E experts,
El = E / ep experts per device, ep the size of the ``expert`` axis, C rows a device sends to each
other device, D model width, F expert width.

Routing, auxiliary losses and load statistics are computed outside, on the global batch (GSPMD), so
balance statistics and the router-bias update see every token. Only the expert computation runs in
``shard_map``:

1. every device flattens its (token, slot) pairs and groups them by destination device
   (``expert // El``) into a buffer [ep, C, D] (slot order is stable);
2. ``all_to_all`` over ``expert`` delivers to each device the rows for its own experts;
3. the device runs its El experts (grouped matmul, as in single-device dropless dispatch; expert
   weights arrive sharded over ``fsdp`` and are all-gathered here: ZeRO-3);
4. a second ``all_to_all`` returns the outputs, which are weighted by the routing weights and
   scatter-added to their tokens on the source device.

C: with ``moe.capacity_factor == 0`` (dropless) C = Nl*A, so no row can ever be dropped: correct
for any routing, at the cost of buffers (and padded compute) ep times the average need. With a
capacity factor cf > 0, C = ceil(cf * Nl*A / ep): rows beyond a destination's capacity are dropped
(their contribution is zero) and counted in ``aux["dropped"]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from open_r1_jax.parallel.mesh import BATCH_AXES


def _local(x, experts, weights, w_gate, w_up, w_down, *, capacity: int, grouped, gather: bool):
    """Per-device body. x [Nl,D], experts/weights [Nl,A], w_* [El, D/fsdp, F] or [El, F, D/fsdp]."""
    ep = jax.lax.axis_size("expert")
    if gather:  # ZeRO-3: gather the width dimension of this device's experts
        w_gate = jax.lax.all_gather(w_gate, "fsdp", axis=1, tiled=True)
        w_up = jax.lax.all_gather(w_up, "fsdp", axis=1, tiled=True)
        w_down = jax.lax.all_gather(w_down, "fsdp", axis=2, tiled=True)
    n, a = experts.shape
    d = x.shape[1]
    n_local_experts = w_gate.shape[0]
    flat = experts.reshape(-1)  # [Nl*A]
    dest = flat // n_local_experts
    order = jnp.argsort(dest, stable=True)
    dest_sorted = dest[order]
    counts = jnp.bincount(dest, length=ep)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(n * a) - starts[dest_sorted]  # rank of each row within its destination
    keep = slot < capacity
    dropped = jnp.sum(~keep)
    slot_c = jnp.where(keep, slot, capacity)  # an out-of-range index: the update is discarded
    token = order // a
    send_x = jnp.zeros((ep, capacity, d), x.dtype).at[dest_sorted, slot_c].set(x[token], mode="drop")
    send_e = (
        jnp.full((ep, capacity), -1, jnp.int32)
        .at[dest_sorted, slot_c]
        .set((flat[order] % n_local_experts).astype(jnp.int32), mode="drop")
    )
    recv_x = jax.lax.all_to_all(send_x, "expert", 0, 0, tiled=True)  # [ep*C, D] rows for my experts
    recv_e = jax.lax.all_to_all(send_e, "expert", 0, 0, tiled=True)  # [ep*C], -1 = empty
    valid = recv_e >= 0
    rows = recv_x.reshape(ep * capacity, d)
    y = grouped(
        rows, jnp.where(valid, recv_e, 0).reshape(-1, 1), valid.astype(rows.dtype).reshape(-1, 1), w_gate, w_up, w_down
    )  # [ep*C, D], empty rows weighted 0
    back = jax.lax.all_to_all(y.reshape(ep, capacity, d), "expert", 0, 0, tiled=True)
    out_rows = back[dest_sorted, jnp.minimum(slot_c, capacity - 1)]  # [Nl*A, D] in sorted order
    w = (weights.reshape(-1)[order] * keep).astype(out_rows.dtype)
    out = jnp.zeros((n, d), out_rows.dtype).at[token].add(out_rows * w[:, None])
    return out, jax.lax.psum(dropped, BATCH_AXES)


def expert_parallel_ffn(x, experts, weights, w_gate, w_up, w_down, *, ep: int, capacity_factor: float, grouped):
    """x [N,D], experts/weights [N,A] (batch-sharded), w_* [E,...] -> (out [N,D], dropped rows).

    ``ep``: the expert-parallel size the model was built for; the mesh itself is the one the step is
    traced under (``jax.set_mesh``: ``shard_map`` needs it, and this is the one module that reads it).
    ``grouped(rows, experts, weights, w_gate, w_up, w_down)`` is the single-device dropless op.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or dict(mesh.shape).get("expert") != ep:
        have = "no mesh" if mesh.empty else f"mesh {dict(mesh.shape)}"
        raise ValueError(
            f"the model was built for expert parallelism over {ep} devices (build_model(..., "
            f"expert_parallel={ep})) but is traced under {have}; trace it inside "
            f"`with jax.set_mesh(mesh)` of a mesh whose expert axis has size {ep}"
        )
    n_dev = math.prod(dict(mesh.shape)[a] for a in BATCH_AXES)
    n_local, a = x.shape[0] // n_dev, experts.shape[1]
    capacity = n_local * a if capacity_factor <= 0 else max(1, math.ceil(capacity_factor * n_local * a / ep))
    fsdp = dict(mesh.shape)["fsdp"]
    gather = fsdp > 1 and x.shape[1] % fsdp == 0  # the width is fsdp-sharded (mesh.rules embed=fsdp)
    wd = "fsdp" if gather else None
    body = lambda *args: _local(*args, capacity=capacity, grouped=grouped, gather=gather)
    tokens = P(BATCH_AXES, None)
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(tokens, tokens, tokens, P("expert", wd, None), P("expert", wd, None), P("expert", None, wd)),
        out_specs=(tokens, P()),
        check_vma=False,
    )
    return fn(x, experts, weights, w_gate, w_up, w_down)
