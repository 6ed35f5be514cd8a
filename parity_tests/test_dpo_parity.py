"""DPO loss and its gradients: JAX vs torch_ref, every loss type, within 1e-5 relative (fp32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_ref
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.data.preference import Pair, PairReport, encode_pairs
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.model import build_model, split_model
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training.stages.dpo import dpo_loss, sequence_logps
from torch_ref import dpo as torch_dpo

CFG = [
    "model.vocab_size=264",
    "model.d_model=32",
    "model.n_layers=2",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.max_seq_len=64",
    "model.drn.n_experts=2",
    "model.drn.expert_ffn_dim=16",
    "model.moe.n_experts=4",
    "model.moe.expert_ffn_dim=16",
    "model.moe.router=sigmoid",
    "model.init_std=0.1",
    "dpo.max_prompt_len=12",
    "dpo.max_len=40",
    "train.seq_len=40",
]
PAIRS = [
    Pair("def f(x):\n", "    return x + 1\n", "    retur x +\n"),
    Pair("import os\n", "print(os.sep)\n", "os.sep(print)\n"),
    Pair("a very long prompt that will be truncated from the left side\n", "ok\n", "no\n"),
]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("loss, eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_dpo_loss_and_grads_match(loss, eps):
    cfg = load_config(None, CFG + [f"dpo.loss={loss}", f"dpo.label_smoothing={eps}", "dpo.beta=0.5"])
    report = PairReport()
    arrays = encode_pairs(PAIRS, ByteTokenizer(), cfg.dpo, report)
    assert report.prompt_truncated == 1
    model = build_model(cfg.model, seed=3)
    graphdef, params, rest = split_model(model)
    ref = [np.float32(-40.0), np.float32(-45.5), np.float32(-20.0)]
    jb = {k: jnp.asarray(v) for k, v in arrays.items()}
    rc, rr = jnp.asarray(ref), jnp.asarray(ref[::-1])

    def jloss(p):
        pc, pr, n_c, n_r, _ = sequence_logps(graphdef, p, rest, jb)
        losses, m = dpo_loss(pc, pr, rc, rr, cfg.dpo, n_c, n_r)
        return jnp.mean(losses), m

    (jl, jm), jg = jax.value_and_grad(jloss, has_aux=True)(params)

    tm = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg.model)))
    tm.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state(nnx.to_pure_dict(nnx.state(model))).items()}
    )
    tb = {k: torch.from_numpy(v) for k, v in arrays.items()}
    pc, pr, n_c, n_r, _ = torch_dpo.sequence_logps(tm, tb)
    losses, tmet = torch_dpo.dpo_loss(pc, pr, torch.tensor(ref), torch.tensor(ref[::-1]), 0.5, loss, eps, n_c, n_r)
    tl = losses.mean()
    tl.backward()
    errs = {"loss": rel(jl, tl.detach().numpy())}
    for k in tmet:
        errs[k] = rel(jm[k], tmet[k].detach().numpy())
    tgrads = {k: p.grad.numpy() for k, p in tm.named_parameters() if p.grad is not None}
    jgrads = to_torch_state(jax.device_get(jg))
    gerr = max(rel(jgrads[k], tgrads[k]) for k in tgrads if np.any(tgrads[k]))
    print(
        f"\n[{loss} eps={eps}] loss {tl.item():.5f}; max metric rel err {max(errs.values()):.1e}; "
        f"max grad rel err {gerr:.1e}"
    )
    assert max(errs.values()) < 1e-5, errs
    assert gerr < 1e-5
