"""Run in a subprocess with 8 fake CPU devices (see tests/test_parallel.py).

For each mesh, the first step's accumulated gradient (before clipping: the global norm and every
parameter's gradient), then 3 training steps from the same initial weights on the same batches;
prints one JSON line with the losses, the max relative differences of the gradients and of the
parameters to the single-device run, and the per-device bytes of parameters and optimizer moments.
Gradients are compared because Adam's update hides a constant gradient scale (a psum-versus-mean bug
in a backward pass would leave the parameters after AdamW almost unchanged).
"""

import json
import sys

import jax
import numpy as np

from open_r1_jax.config import load_config
from open_r1_jax.parallel.mesh import batch_sharding, make_mesh, per_device_bytes
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.state import create_train_state
from open_r1_jax.training.step import make_train_step

BASE = [
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.max_seq_len=32",
    "model.drn.n_experts=2",
    "model.drn.expert_ffn_dim=32",
    "model.moe.n_experts=8",
    "model.moe.top_k=2",
    "model.moe.expert_ffn_dim=32",
    "model.moe.router=sigmoid",
    "model.moe.n_shared_experts=1",
    "model.moe.seq_balance_coef=0.01",
    "train.seq_len=16",
    "train.global_batch=16",
    "train.micro_batch=8",
    "train.steps=10",
    "train.warmup_steps=1",
    "train.lr=6e-4",
]


def batches(n, b, t, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tok = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
        seg = np.ones((b, t), np.int32)
        seg[::3, t // 2 :] = 2
        seg[1::4, -3:] = 0
        pos = np.where(seg == 2, np.arange(t) - t // 2, np.arange(t)).astype(np.int32)
        out.append({"inputs": tok[:, :-1], "targets": tok[:, 1:], "positions": pos, "segment_ids": seg})
    return out


def run(mesh_overrides, extra=()):
    cfg = load_config(None, BASE + list(mesh_overrides) + list(extra))
    n = cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.expert
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:n])
    with jax.set_mesh(mesh):
        tx = make_optimizer(cfg.train)
        graphdef, state, sh = create_train_state(cfg, tx, mesh)
        bsh = batch_sharding(mesh)
        step = jax.jit(
            make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg, return_grads=True),
            in_shardings=(sh, bsh),
            out_shardings=(sh, None),
        )
        losses, dropped, grads = [], 0, None
        for batch in batches(3, cfg.train.global_batch, cfg.train.seq_len):
            state, m = step(state, {k: jax.device_put(v, bsh) for k, v in batch.items()})
            grads = jax.device_get(m["grads"]) if grads is None else grads  # the first step's, before clipping
            losses.append(float(m["loss"]))
            dropped += int(m.get("dropped", 0))
        params = jax.device_get(state["params"])
        mu = state["opt_state"][1][0].mu
        sizes = {
            "params": per_device_bytes(state["params"]),
            "mu": per_device_bytes(mu),
            "params_total": sum(x.nbytes for x in jax.tree.leaves(params)),
        }
        w = state["params"]["blocks"][1]["ffn"]["experts"]["w_gate"]
        sizes["expert_w_gate_spec"] = str(w.sharding.spec)
    return losses, params, sizes, dropped, grads


if __name__ == "__main__":
    if sys.argv[1:] == ["capacity"]:  # capacity mode: overflow is dropped and counted
        losses, _, _, dropped, _ = run(["mesh.expert=8"], ["model.moe.capacity_factor=0.5"])
        print(json.dumps({"mesh": "expert8_capacity0.5", "losses": losses, "dropped": dropped}))
        sys.exit(0)
    meshes = {
        "data8": ["mesh.data=8"],
        "fsdp8": ["mesh.fsdp=8"],
        "d2f2e2": ["mesh.data=2", "mesh.fsdp=2", "mesh.expert=2"],
        "expert8": ["mesh.expert=8"],
    }
    extra = sys.argv[1:]
    ref_losses, ref_params, _, _, ref_grads = run([], extra)
    rel = lambda a, b: float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
    norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(tree))))
    for name, ov in meshes.items():
        losses, params, sizes, dropped, grads = run(ov, extra)
        param_rel = max(rel(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
        grad_rel = max(rel(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        loss_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
        print(
            json.dumps(
                {
                    "mesh": name,
                    "losses": losses,
                    "ref_losses": ref_losses,
                    "loss_rel": loss_rel,
                    "param_rel": param_rel,
                    "grad_rel": grad_rel,
                    "grad_norm": norm(grads),
                    "ref_grad_norm": norm(ref_grads),
                    "dropped": dropped,
                    **sizes,
                }
            ),
            flush=True,
        )
