"""LoRA: the JAX model (adapters folded into their matrices, ``open_r1_jax/model/lora.py``) against
``torch_ref/lora.py`` (PEFT's unmerged ``base(x) + s B(A x)`` for linear layers), and against peft
itself loading ``python -m open_r1_jax.lora save`` on the transformers export of the base.

Adapters are random and non-zero (B = 0 would make every gradient of A zero and hide layout bugs).
``pytest -s`` prints the errors measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_ref
from open_r1_jax import lora as lora_cli
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.model import build_model, lora, merge_model, split_model
from open_r1_jax.name_map import to_torch_state
from open_r1_jax.training.losses import summed_nll
from torch_ref import lora as torch_lora

LOGIT_TOL, GRAD_TOL = 1e-5, 1e-4
RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "experts", "shared", "drn", "lm_head"]
MODEL = [
    "model.vocab_size=272",
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.init_std=0.1",
    "model.kernels=xla",
    "model.drn.n_experts=3",
    "model.drn.expert_ffn_dim=16",
    "model.moe.n_experts=4",
    "model.moe.top_k=2",
    "model.moe.expert_ffn_dim=24",  # F != D: a transposed layout cannot pass by symmetry
    "model.moe.n_shared_experts=1",
    "model.moe.dispatch=dense",  # torch_ref's dispatch; dropless = dense is tested elsewhere
    f"lora.rank={RANK}",
    f"lora.alpha={ALPHA}",
    f"lora.targets=[{','.join(TARGETS)}]",
]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def lora_model():
    """(cfg, graphdef, params with random non-zero adapters, model_state)."""
    cfg = load_config(None, MODEL)
    graphdef, params, model_state = split_model(build_model(cfg.model, 0))
    paths = lora.target_paths(cfg.model, cfg.lora)
    adapters = lora.init(params, paths, RANK, jax.random.key(1))
    rng = np.random.default_rng(2)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape).astype(np.float32)), adapters)
    return cfg, graphdef, {**params, lora.KEY: adapters}, model_state


def _tokens(b=2, t=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, t + 1))


def test_lora_logits_and_adapter_grads_match_torch_ref(lora_model):
    cfg, graphdef, params, model_state = lora_model
    toks = _tokens()
    inputs, targets = toks[:, :-1], toks[:, 1:]

    def loss(adapters):
        folded = lora.fold({**params, lora.KEY: adapters}, lora.scale(cfg.lora))
        logits, _ = merge_model(graphdef, folded, model_state)(jnp.asarray(inputs))
        nll, n = summed_nll(logits, jnp.asarray(targets), jnp.ones(targets.shape, bool))
        return nll / n, logits

    (jax_loss, jax_logits), jax_grads = jax.value_and_grad(loss, has_aux=True)(params[lora.KEY])

    ref = torch_ref.Transformer(torch_ref.TorchModelConfig.from_dict(to_dict(cfg.model)))
    base = {k: v for k, v in params.items() if k != lora.KEY}
    ref.load_state_dict({k: torch.tensor(v) for k, v in to_torch_state(base).items()}, strict=False)
    modules = torch_lora.apply_lora(ref, TARGETS, RANK, ALPHA)
    flat = {"/".join(str(k) for k in path): (ad["a"], ad["b"]) for path, ad in lora._walk(params[lora.KEY])}
    assert sorted(flat) == sorted(modules)  # the same matrices are adapted on both sides
    torch_lora.load_adapters(modules, {k: tuple(np.asarray(x) for x in v) for k, v in flat.items()})
    logits, _ = ref(torch.tensor(inputs))
    ref_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1)
    )
    ref_loss.backward()
    ref_grads = torch_lora.adapter_grads(modules)

    e_logits = rel_err(jax_logits, logits.detach().numpy())
    print(f"\nlora logits rel err {e_logits:.2e}; loss {float(jax_loss):.6f} vs {ref_loss.item():.6f}")
    assert e_logits < LOGIT_TOL
    assert abs(float(jax_loss) - ref_loss.item()) / ref_loss.item() < LOGIT_TOL
    worst = 0.0
    for path, ad in lora._walk(jax_grads):
        key = "/".join(str(k) for k in path)
        for got, want in zip((ad["a"], ad["b"]), ref_grads[key]):
            assert np.max(np.abs(np.asarray(want))) > 0, key  # every adapter gets a gradient
            worst = max(worst, rel_err(got, want.numpy()))
    print(f"lora adapter grads: worst rel err {worst:.2e} over {len(ref_grads)} adapters")
    assert worst < GRAD_TOL


@pytest.fixture(scope="module")
def lora_run(lora_model, tmp_path_factory):
    """A params-only LoRA checkpoint, its PEFT adapter folder and its base export."""
    cfg, _, params, model_state = lora_model
    root = tmp_path_factory.mktemp("lora")
    with Checkpointer(root / "run" / "checkpoints") as ckpt:
        ckpt.save_params(5, params, model_state, to_dict(cfg))
    assert lora_cli.main(["save", "--run", str(root / "run"), "--out", str(root / "adapter"), "--base-out",
                          str(root / "base")]) == 0  # fmt: skip
    return root


def test_peft_loads_the_adapter_with_the_jax_logits(lora_model, lora_run):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg, graphdef, params, model_state = lora_model
    base = transformers.AutoModelForCausalLM.from_pretrained(lora_run / "base", trust_remote_code=True)
    model = peft.PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    # the MoE layers of the export dispatch sparsely: exercise routed experts through the wrapper
    toks = _tokens(3, 20, seed=4)[:, :-1]
    with torch.no_grad():
        got = model(torch.tensor(toks)).logits.numpy()
    folded = lora.fold(params, lora.scale(cfg.lora))
    want = np.asarray(merge_model(graphdef, folded, model_state)(jnp.asarray(toks))[0])
    plain = np.asarray(merge_model(graphdef, {k: v for k, v in params.items() if k != lora.KEY}, model_state)(
        jnp.asarray(toks))[0])  # fmt: skip
    err = rel_err(got, want)
    print(f"\npeft vs jax lora logits rel err {err:.2e} (the adapters change the logits by {rel_err(plain, want):.2f})")
    assert rel_err(plain, want) > 0.01  # the adapters matter, so agreement is not the base's
    assert err < LOGIT_TOL


def test_merged_export_equals_peft_unmerged(lora_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    assert lora_cli.main(["merge", "--run", str(lora_run / "run"), "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(lora_run / "base", trust_remote_code=True)
    unmerged = peft.PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    toks = torch.tensor(_tokens(2, 24, seed=5)[:, :-1])
    with torch.no_grad():
        err = rel_err(merged(toks).logits.numpy(), unmerged(toks).logits.numpy())
    print(f"\nmerged export vs peft unmerged: rel err {err:.2e}")
    assert err < LOGIT_TOL
