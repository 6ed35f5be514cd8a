"""The Hugging Face bridge against transformers itself (everything built here, nothing downloaded).

Export: ``AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)`` gives the JAX model's
logits (fp32, relative error < 1e-5), greedy ``generate`` gives the tokens of ``python -m
open_r1_jax.generate``, a bf16 export loads and runs, and ``AutoTokenizer`` encodes as the run's
tokenizer. Imports: tiny random ``LlamaForCausalLM`` / ``MixtralForCausalLM`` saved by transformers
give the same logits once imported. Refusals: each bad folder is named and nothing is written.
``pytest -s`` prints the errors measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import open_r1_jax
from open_r1_jax import export as export_lib
from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer, tokenizer_for
from open_r1_jax.model import build_model, split_model

transformers = pytest.importorskip("transformers")

LOGIT_TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "model.vocab_size=272",  # covers the byte tokenizer (257 tokens)
    "model.d_model=32",
    "model.n_layers=3",
    "model.drn_layers=1",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=8",
    "model.max_seq_len=1024",  # lm-eval cuts contexts to max_position_embeddings (= max_seq_len)
    "model.init_std=0.1",  # peaked logits: greedy decoding has no near-ties
    "model.drn.n_experts=3",
    "model.drn.expert_ffn_dim=16",
    "model.moe.n_experts=4",
    "model.moe.expert_ffn_dim=16",
]
MODELS = {
    "softmax": ["model.moe.router=softmax", "model.attention.rope_theta=500.0"],
    "sigmoid_shared": [
        "model.moe.router=sigmoid",
        "model.moe.n_shared_experts=1",
        "model.moe.route_scale=2.5",
        "model.tie_embeddings=true",
        "model.attention.rope_scaling=linear",
        "model.attention.rope_factor=2.0",
    ],
}


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """(name, run dir, export dir): random weights, non-zero router biases, exported in fp32."""
    cfg = load_config(None, BASE + MODELS[request.param])
    _, params, model_state = split_model(build_model(cfg.model, 0))
    rng = np.random.default_rng(1)
    model_state = jax.tree.map(lambda b: jnp.asarray(rng.normal(0, 0.5, b.shape).astype(np.float32)), model_state)
    root = tmp_path_factory.mktemp(request.param)
    with Checkpointer(root / "run" / "checkpoints") as ckpt:
        ckpt.save_params(3, params, model_state, to_dict(cfg))
    assert export_lib.main(["--run", str(root / "run"), "--out", str(root / "hf")]) == 0
    return request.param, root / "run", root / "hf"


def _load(path, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kw).eval()


def test_transformers_logits_match_jax(exported):
    name, run, hf = exported
    model = _load(hf)
    assert type(model).__name__ == "SandwichForCausalLM" and model.dtype == torch.float32
    tokens = np.random.default_rng(0).integers(0, 257, (2, 40))
    want = np.asarray(open_r1_jax.load_pretrained(run)(tokens.astype(np.int32)))
    with torch.no_grad():
        got = model(torch.from_numpy(tokens)).logits.numpy()
        # left padding (as generate and lm-eval batch prompts): positions start at each row's first token
        padded = torch.cat([torch.full((2, 5), 256), torch.from_numpy(tokens)], dim=1)
        mask = torch.cat([torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 40, dtype=torch.long)], dim=1)
        got_padded = model(padded, attention_mask=mask).logits[:, 5:].numpy()
    err, err_padded = rel_err(got, want), rel_err(got_padded, want)
    print(f"[{name}] transformers export vs JAX logits: max relative error {err:.2e} (left-padded {err_padded:.2e})")
    assert err < LOGIT_TOL and err_padded < LOGIT_TOL


def test_greedy_generate_matches_jax_cli(exported, capsys):
    from open_r1_jax import generate as generate_cli
    from open_r1_jax.generate import Generator

    name, run, hf = exported
    model, tok = _load(hf), transformers.AutoTokenizer.from_pretrained(hf, trust_remote_code=True)
    prompt = "def main(argv):\n    "
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == ByteTokenizer().encode(prompt).tolist()  # the exported tokenizer is the run's
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=64, do_sample=False)[0, ids.shape[1] :].tolist()
    hf_tokens = out[: out.index(256)] if 256 in out else out  # generate stops after eos; JAX drops it

    assert generate_cli.main(["--run", str(run), "--prompt", prompt, "--max-new-tokens", "64", "--no-stream"]) == 0
    printed = capsys.readouterr().out.split("\n", 1)[1]
    assert printed == prompt + ByteTokenizer().decode(hf_tokens) + "\n"
    jax_tokens = Generator.from_pretrained(open_r1_jax.load_pretrained(run)).generate(
        [ByteTokenizer().encode(prompt)], 64, stop_ids=(256,)
    )
    assert jax_tokens.tokens[0].tolist() == hf_tokens
    with capsys.disabled():
        print(f"[{name}] greedy generate: {len(hf_tokens)} tokens identical (transformers vs open_r1_jax.generate)")
    assert len(hf_tokens) >= 8  # a real comparison, not an immediate stop


def test_bf16_export_loads_and_runs(exported, tmp_path):
    name, run, _ = exported
    out = tmp_path / "bf16"
    assert export_lib.main(["--run", str(run), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = _load(out, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    tokens = np.random.default_rng(0).integers(0, 257, (2, 24))
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens)).logits
        gen = model.generate(torch.from_numpy(tokens[:1, :8]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
    want = np.asarray(open_r1_jax.load_pretrained(run)(tokens.astype(np.int32)))
    err = rel_err(logits.float().numpy(), want)
    print(f"[{name}] bf16 export vs fp32 JAX logits: max relative error {err:.2e}")
    assert torch.isfinite(logits).all() and gen.shape == (1, 24)
    assert err < 0.05  # bf16 weights and activations: ~8 significant bits


def test_bpe_tokenizer_export(exported, tmp_path):
    _, run, _ = exported
    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int\n"] * 50
    bpe = BPETokenizer.train(texts, 270)
    import shutil

    shutil.copytree(run, tmp_path / "run")
    bpe.save(tmp_path / "run" / "tokenizer.json")
    assert export_lib.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    for text in ("def add(x, y):\n    return x * y", "héllo wörld\t<|endoftext|>"):
        assert tok(text).input_ids == bpe.encode(text).tolist()
        assert tok.decode(bpe.encode(text), skip_special_tokens=True) == bpe.decode(bpe.encode(text))
    assert tok.eos_token_id == bpe.eos_id == json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"]
    np.testing.assert_array_equal(tokenizer_for(tmp_path / "hf").token_bytes, bpe.token_bytes)


def test_byte_tokenizer_export_reads_back_as_bytes(exported):
    """The exported byte tokenizer, read by this project (load_pretrained / DPO / eval of an export),
    encodes and counts bytes as ByteTokenizer does (bits per byte stay comparable)."""
    _, _, hf = exported
    byte, back = ByteTokenizer(), tokenizer_for(hf)
    text = "héllo\x00 wörld ☃ \n\t"
    assert back.encode(text).tolist() == byte.encode(text).tolist() and back.eos_id == byte.eos_id
    np.testing.assert_array_equal(back.token_bytes, byte.token_bytes)


# ----------------------------------------------------------------------------- imports


def _tiny(kind: str):
    kw = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            **kw, rms_norm_eps=1e-5, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}
        )
        return transformers.LlamaForCausalLM(cfg)
    if kind == "llama_tied":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, tie_word_embeddings=True))
    cfg = transformers.MixtralConfig(**kw, num_local_experts=4, num_experts_per_tok=2)
    return transformers.MixtralForCausalLM(cfg)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_models")
    for kind in ("llama", "llama_tied", "mixtral"):
        _tiny(kind).eval().save_pretrained(root / kind)
    return root


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "mixtral"])
def test_imported_checkpoint_matches_transformers(hf_models, tmp_path, kind):
    src = hf_models / kind
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    tokens = np.random.default_rng(0).integers(0, 300, (2, 48))
    with torch.no_grad():
        want = model(torch.from_numpy(tokens)).logits.float().numpy()
    direct = open_r1_jax.load_pretrained(src)
    assert export_lib.main(["--from-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    imported = open_r1_jax.load_pretrained(tmp_path / "run")
    m = imported.config
    if kind == "mixtral":
        assert (m.drn_layers, m.moe.n_experts, m.moe.top_k, m.moe.router) == (0, 4, 2, "softmax")
    else:
        assert (m.drn_layers, m.drn.n_experts, m.tie_embeddings) == (2, 1, kind == "llama_tied")
    errs = [rel_err(p(tokens.astype(np.int32)), want) for p in (direct, imported)]
    print(f"[{kind}] imported JAX vs transformers logits: max relative error {errs[0]:.2e} (via run {errs[1]:.2e})")
    assert max(errs) < LOGIT_TOL


def _edit(src: Path, dst: Path, config=None, tensors=None) -> Path:
    """A copy of a saved model folder with its config.json and/or tensors changed."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    if config:
        raw = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(config(raw)))
    if tensors:
        t = load_file(str(dst / "model.safetensors"))
        save_file(tensors(t), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _rename(t, old, new):
    t[new] = t.pop(old)
    return t


BAD = {
    "no_config": (lambda p: (p / "config.json").unlink(), "config.json: not found"),
    "unknown_type": ({"config": lambda c: {**c, "model_type": "gpt2"}}, "model_type 'gpt2' is not supported"),
    "attention_bias": ({"config": lambda c: {**c, "attention_bias": True}}, "attention_bias = True"),
    "rope_llama3": (
        {"config": lambda c: {**c, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}},
        "rope type = 'llama3'",
    ),
    "missing_weight": (
        {"tensors": lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"}},
        "missing model.layers.1.mlp.up_proj.weight (96, 64)",
    ),
    "misnamed_weight": (
        {"tensors": lambda t: _rename(t, "model.norm.weight", "model.final_norm.weight")},
        "unexpected model.final_norm.weight",
    ),
    "wrong_shape": (
        {"tensors": lambda t: {**t, "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)}},
        "model.layers.0.self_attn.k_proj.weight: shape (16, 64), config.json implies (32, 64)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_folder_is_named_and_nothing_written(hf_models, tmp_path, capsys, case):
    change, expected = BAD[case]
    src = tmp_path / "src"
    if callable(change):
        import shutil

        shutil.copytree(hf_models / "llama", src)
        change(src)
    else:
        _edit(hf_models / "llama", src, **change)
    out = tmp_path / "out"
    assert export_lib.main(["--from-hf", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert expected in err and str(src) in err, err
    assert err.count("\n") == 1  # one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no partial folder
    with pytest.raises((ValueError, FileNotFoundError)):
        open_r1_jax.load_pretrained(src)


def test_existing_out_is_refused(hf_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_lib.main(["--from-hf", str(hf_models / "llama"), "--out", str(out)]) == 1
    assert f"--out {out}: already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and len(list(tmp_path.iterdir())) == 1


# ----------------------------------------------------------------------------- lm-eval on an export


def test_lm_eval_and_open_r1_jax_eval_agree_on_the_export(exported, tmp_path):
    """lm-eval's hf model on the shipped task (20 of its questions) and ``python -m open_r1_jax.eval``
    on the same file and export: the same accuracy (the issue allows 0.2 points for ties)."""
    from open_r1_jax.eval import cli

    name, _, hf = exported
    if name != "softmax":
        pytest.skip("one model is enough for the lm-eval run")
    rows = (ROOT / "evals" / "data" / "next_line.jsonl").read_text().splitlines()[:20]
    (tmp_path / "mc.jsonl").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        *(sys.executable, "-m", "lm_eval", "--model", "hf", "--device", "cpu", "--batch_size", "8"),
        *("--model_args", f"pretrained={hf},trust_remote_code=True,dtype=float32"),
        *("--tasks", "next_line", "--include_path", str(ROOT / "evals" / "tasks")),
        *("--metadata", json.dumps({"mc_file": str(tmp_path / "mc.jsonl")}), "--output_path", str(tmp_path / "out")),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["next_line"]

    argv = ["--run", str(hf), "--tasks", "mc", "--out", str(tmp_path / "ours"), "--no-progress"]
    assert cli.main([*argv, f"mc.file={tmp_path / 'mc.jsonl'}"]) == 0
    mc_res = json.loads((tmp_path / "ours" / "results.json").read_text())["tasks"]["mc"]
    ours = mc_res["metrics"]["acc"]
    print(f"next_line, 20 questions: lm-eval acc {theirs['acc,none']:.2f}, open_r1_jax.eval acc {ours['value']:.2f}")
    assert ours["n"] == 20 and abs(ours["value"] - theirs["acc,none"]) <= 0.002
    assert ours["stderr"] == pytest.approx(theirs["acc_stderr,none"])
    # per question: the same four log-likelihoods (accuracy alone could agree by chance on 20 questions)
    samples = [
        json.loads(x) for x in next((tmp_path / "out").rglob("samples_next_line_*.jsonl")).read_text().split("\n") if x
    ]
    samples.sort(key=lambda x: x["doc_id"])
    theirs_ll = np.array([[float(r[0]) for r in x["filtered_resps"]] for x in samples])
    ours_ll = np.array([q["loglikelihoods"] for q in mc_res["questions"]])
    np.testing.assert_allclose(ours_ll, theirs_ll, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- starting points


def test_pretraining_continues_from_an_imported_llama(hf_models, tmp_path):
    """``train.init_from``: the architecture and weights come from the import (a learning rate of 1e-9
    keeps them: the run's logits are the import's), this config's tokenizer must match the weights'."""
    from open_r1_jax.config import ConfigError
    from open_r1_jax.training.trainer import Trainer

    imported = tmp_path / "imported"
    assert export_lib.main(["--from-hf", str(hf_models / "llama"), "--out", str(imported)]) == 0
    overrides = [f"train.init_from={imported}", "train.steps=1", "train.warmup_steps=0", "train.lr=1e-9"]
    overrides += ["train.min_lr=0", "train.seq_len=32", "train.global_batch=4", "train.eval_batches=1"]
    overrides += ["data.max_corpus_mb=0.3", "run.progress=false", "run.tensorboard=false", "run.peak_tflops=0.1"]
    cfg = load_config(None, [*overrides, f"run.dir={tmp_path / 'continued'}"])
    summary = Trainer(cfg).run()
    assert summary["steps"] == 1 and np.isfinite(summary["eval_loss"])
    before, after = open_r1_jax.load_pretrained(imported), open_r1_jax.load_pretrained(tmp_path / "continued")
    assert after.config.drn_layers == 2 and after.config.drn.n_experts == 1 and after.config.vocab_size == 300
    tokens = np.random.default_rng(0).integers(0, 300, (2, 32)).astype(np.int32)
    assert rel_err(after(tokens), before(tokens)) < LOGIT_TOL

    with_bpe = [*overrides, "data.tokenizer=bpe", "data.bpe_vocab_size=256"]
    bpe = load_config(None, [*with_bpe, f"run.dir={tmp_path / 'bpe'}"])
    with pytest.raises(ConfigError, match="trained on bytes"):
        Trainer(bpe).run()
    # a folder with its own tokenizer: the data must use it, and it must have the end-of-document token
    from tokenizers import Tokenizer, models

    from open_r1_jax.training.stages import Pretrain

    BPETokenizer.train(["def f(x):\n    return x\n"] * 20, 260).save(imported / "tokenizer.json")
    with pytest.raises(ConfigError, match=f"data.tokenizer=bpe data.tokenizer_path={imported / 'tokenizer.json'}"):
        Pretrain(cfg).initial_weights()
    Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(imported / "tokenizer.json"))
    theirs = load_config(None, [*with_bpe, f"data.tokenizer_path={imported / 'tokenizer.json'}"])
    with pytest.raises(ConfigError, match="has no <|endoftext|> token"):
        Pretrain(theirs).initial_weights()
