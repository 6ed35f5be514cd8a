"""30 training steps in JAX and in torch_ref from identical weights on identical batches.

Same optimiser (AdamW 0.9/0.95, decay on matrices only), warmup + cosine schedule, global-norm clip,
exact accumulation over micro-batches, MoE auxiliary losses and the sigmoid router's bias update.
The loss of every step must agree within 1e-4 relative in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_ref
from open_r1_jax.config import DataConfig, load_config, to_dict
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset
from open_r1_jax.data.sources import load_documents
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.model import build_model, split_model
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training.optim import make_optimizer
from open_r1_jax.training.stages import Pretrain
from open_r1_jax.training.step import init_state, make_train_step
from torch_ref.train import make_optimizer as torch_optimizer
from torch_ref.train import train_step as torch_step

STEPS, TOL = 30, 1e-4
CONFIG = [
    "model.vocab_size=264",
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.max_seq_len=32",
    "model.drn.n_experts=2",
    "model.drn.expert_ffn_dim=32",
    "model.moe.n_experts=4",
    "model.moe.top_k=2",
    "model.moe.expert_ffn_dim=32",
    "model.moe.router=sigmoid",
    "model.moe.n_shared_experts=1",
    "model.moe.bias_update_rate=0.01",
    "model.moe.seq_balance_coef=0.01",
    "train.steps=30",
    "train.warmup_steps=5",
    "train.lr=3e-3",
    "train.min_lr=3e-5",
    "train.seq_len=32",
    "train.global_batch=8",
    "train.micro_batch=4",
    "train.clip_norm=0.5",  # low enough that clipping is active in some steps
]


def batches(cfg, n):
    docs, _, _ = load_documents(DataConfig(max_corpus_mb=0.2, heldout_percent=0))
    tok = ByteTokenizer()
    src = ChunkSource([tok.encode(d.text) for d in docs], cfg.train.seq_len, tok.eos_id)
    it = iter(make_dataset(src, PipelineSpec(cfg.train.seq_len, cfg.train.global_batch, 0, 4, train=True)))
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("router", ["sigmoid", "softmax"])
def test_thirty_steps_match(router):
    cfg = load_config(None, CONFIG + [f"model.moe.router={router}"])
    data = batches(cfg, STEPS)
    model = build_model(cfg.model, seed=1)
    torch_model = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg.model)))
    torch_model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state(nnx.to_pure_dict(nnx.state(model))).items()},
        strict=True,
    )
    graphdef, params, model_state = split_model(model)
    tx = make_optimizer(cfg.train)
    state = init_state(params, model_state, tx, cfg)
    step = jax.jit(make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg))
    opt = torch_optimizer(torch_model, to_dict(cfg.train))

    jax_losses, torch_losses, clipped = [], [], 0
    for i, batch in enumerate(data):
        state, m = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
        out = torch_step(
            torch_model,
            opt,
            {k: torch.from_numpy(v).long() if k != "segment_ids" else torch.from_numpy(v) for k, v in batch.items()},
            i,
            to_dict(cfg.train),
        )
        jax_losses.append(float(m["loss"]))
        torch_losses.append(out["loss"])
        clipped += out["grad_norm"] > cfg.train.clip_norm
    rel = np.abs(np.array(jax_losses) - np.array(torch_losses)) / np.abs(np.array(torch_losses))
    print(
        f"\n[{router}] loss {torch_losses[0]:.4f} -> {torch_losses[-1]:.4f}; max relative loss "
        f"difference over {STEPS} steps: {rel.max():.2e} (clipped steps: {clipped})"
    )
    assert torch_losses[-1] < torch_losses[0] - 0.5  # it really trains
    assert clipped > 0
    assert rel.max() < TOL, rel
    # the parameters (and router biases) followed the same trajectory
    final = to_torch_state(
        nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, nnx.State(state["params"]), nnx.State(state["model_state"]))))
    )
    ref = torch_model.state_dict()
    # Relative Frobenius error per tensor. (An elementwise max is not meaningful here: Adam normalises
    # each gradient element, so an element whose gradient is ~0, e.g. the embedding row of a rare byte,
    # moves by +-lr on float noise and the two trajectories may differ there by ~lr.)
    errs = {
        k: float(np.linalg.norm(final[k] - ref[k].numpy()) / (np.linalg.norm(ref[k].numpy()) + 1e-12)) for k in final
    }
    worst = max(errs, key=errs.get)
    print(f"[{router}] max relative parameter difference (Frobenius) after {STEPS} steps: {errs[worst]:.2e} ({worst})")
    assert errs[worst] < 1e-4
