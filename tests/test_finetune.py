"""Fine-tuning: SFT data (layouts, chat templates, loss masks, bad lines), the SFT stage with LoRA end to
end (only adapters train, only they get optimizer moments), the ``complete`` evaluation and the
synthetic finance domain of the LoRA demo."""

import json
import shutil

import jax
import numpy as np
import pytest

from open_r1_jax.config import ConfigError, load_config
from open_r1_jax.data import instruct, synthetic
from open_r1_jax.data.chat import DEFAULT_TEMPLATE, ChatTemplate, ChatTemplateError, save_template, template_for
from open_r1_jax.data.sources import load_documents, read_documents
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.training.trainer import train

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_chat_template_trains_only_assistant_turns(tmp_path):
    t = ChatTemplate()
    segs = t.segments([*CHAT, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}])
    assert "".join(s for s, _ in segs) == t.render(
        [*CHAT, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    )
    assert [s for s, trained in segs if trained] == ["hello<|im_end|>\n", "ok<|im_end|>\n"]
    # conversational prompt-completion: only assistant turns from trained_from on
    assert [s for s, trained in t.segments(CHAT + CHAT, trained_from=2) if trained] == ["hello<|im_end|>\n"]
    reverse = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="not a prefix"):
        ChatTemplate(reverse).segments([*CHAT, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
    assert template_for(tmp_path) == "" and template_for(None) == ""
    save_template(tmp_path, DEFAULT_TEMPLATE)
    assert template_for(tmp_path / "checkpoints" / "4") == DEFAULT_TEMPLATE  # found from a checkpoint folder


def test_reads_trl_layouts_and_reports_bad_lines(tmp_path):
    rows = [
        {"prompt": "2+2=", "completion": "4"},
        {"messages": CHAT},
        {"prompt": CHAT[:1], "completion": CHAT[1:]},
        "{not json",
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"prompt": 3, "completion": "x"},
    ]
    path = _write(tmp_path / "d.jsonl", rows)
    report = instruct.InstructReport()
    found = instruct.read_examples(path, ChatTemplate(), 0.5, report)
    assert [ex.completion for ex in found] == ["4", "hello<|im_end|>\n", "hello<|im_end|>\n"]
    assert found[0].prompt == "2+2=" and found[0].eos and not found[1].eos
    assert [b.split(": ")[0] for b in report.bad] == [f"{path}:4", f"{path}:5", f"{path}:6"]
    assert "no assistant turn" in report.bad[1] and "needs string fields" in report.bad[2]
    with pytest.raises(instruct.InstructDataError, match=r"3 of 6 lines are malformed.*d.jsonl:4"):
        instruct.read_examples(path, ChatTemplate(), 0.1, instruct.InstructReport())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        instruct.read_examples(tmp_path / "none.jsonl", ChatTemplate(), 0.1, instruct.InstructReport())


def test_loss_mask_covers_the_completion_and_its_end_only():
    tok, report = ByteTokenizer(), instruct.InstructReport()
    ex = instruct.Example([("ab", False), ("cd", True)], eos=True)
    long = instruct.Example([("p" * 8, False), ("c" * 10, True)], eos=True)
    empty = instruct.Example([("p" * 10, False), ("c", True)], eos=True)  # its completion is cut off
    items = instruct.encode_examples([ex, long, empty], tok, 8, report)
    assert items[0]["targets"].tolist() == [*tok.encode("bcd").tolist(), tok.eos_id]
    assert items[0]["loss_mask"].tolist() == [0, 1, 1, 1]  # predicts c, d, end of document
    assert items[1]["loss_mask"].tolist() == [0] * 7 + [1]  # cut to seq_len + 1 tokens: one trained target left
    assert (report.examples, report.truncated, report.empty, report.trained_tokens) == (2, 2, 1, 4)


def test_demo_examples_are_deterministic_and_held_out():
    a = instruct.demo_examples(False, 20, 0, 256, max_corpus_mb=2)
    assert [e.where for e in a] == [e.where for e in instruct.demo_examples(False, 20, 0, 256, max_corpus_mb=2)]
    held = instruct.demo_examples(True, 50, 0, 256, max_corpus_mb=2)
    assert held and not {e.where.split(":")[0] for e in held} & {e.where.split(":")[0] for e in a}
    for e in a + held:
        assert e.completion.startswith("def ") and len((e.prompt + e.completion).encode()) < 256


def test_synthetic_finance_is_deterministic_and_split():
    docs = synthetic.finance_documents(30)
    assert [d.text for d in docs] == [d.text for d in synthetic.finance_documents(30)]
    assert "reported" in docs[0].text and "per diluted share" in docs[0].text
    train_docs, held, report = load_documents(load_config(None, ["data.sources=[synthetic:finance]"]).data)
    assert held and not {d.name for d in held} & {d.name for d in train_docs}
    assert report.documents == len(train_docs) + len(held)
    scored, _ = read_documents(["synthetic:finance"])  # evaluation reads the held-out documents only
    assert [d.name for d in scored] == [d.name for d in held]
    # replay: the domain mixed with the embedded corpus ("stdlib"), within data.max_corpus_mb in all
    cfg = load_config(None, ["data.sources=[synthetic:finance,stdlib]", "data.max_corpus_mb=2.3"]).data
    mixed, _, report = load_documents(cfg)
    assert {d.name for d in train_docs} < {d.name for d in mixed} and any(d.name.endswith(".py") for d in mixed)
    assert 2.3e6 <= report.bytes < 2.6e6
    with pytest.raises(ValueError, match="unknown synthetic domain 'synthetic:medicine'"):
        read_documents(["synthetic:medicine"], what="ppl.files")


def test_lora_and_sft_config_errors():
    with pytest.raises(ConfigError, match="lora.dropout"):
        load_config(None, ["lora.rank=4", "lora.dropout=0.1"])
    with pytest.raises(ConfigError, match="lora.targets"):
        load_config(None, ["lora.rank=4", "lora.targets=[q_proj,nope]"])
    from open_r1_jax.config.checks import ignored_keys

    assert ("lora.alpha", "lora.rank is 0 (LoRA off)") in ignored_keys(load_config(None, ["lora.alpha=8"]))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from micro import micro_config

    run = tmp_path_factory.mktemp("finetune") / "base"
    train(micro_config("train.steps=2", "train.warmup_steps=0", "train.eval_every=0", run_dir=run))
    return run


def test_sft_with_lora_trains_only_the_adapters(base_run, tmp_path):
    from micro import micro_config

    from open_r1_jax.checkpoint import read_weights
    from open_r1_jax.eval.complete import run as complete_run
    from open_r1_jax.eval.config import CompleteConfig
    from open_r1_jax.eval.model import EvalModel
    from open_r1_jax.model import lora

    rows = [{"prompt": f"x{i}=", "completion": f"{i}"} for i in range(40)] + ["oops"]
    data = _write(tmp_path / "sft.jsonl", rows)
    run = tmp_path / "sft"
    summary = train(
        micro_config(
            "train.stage=sft",
            f"train.init_from={base_run}",
            f"sft.train_path={data}",
            f"sft.eval_path={data}",
            "sft.max_bad_fraction=0.05",
            "train.steps=3",
            "train.eval_every=3",
            "train.warmup_steps=1",
            "train.lr=1e-2",
            "lora.rank=2",
            "lora.targets=[q_proj,experts,lm_head]",
            run_dir=run,
        )
    )
    assert summary["eval_before"]["eval_loss"] > 0 and np.isfinite(summary["eval_loss"])
    report = json.loads((run / "sft_data.json").read_text())
    assert report["train"]["examples"] == 40
    assert report["train"]["bad"] == [f"{data}:41: not valid JSON (JSONDecodeError)"]
    assert report["heldout"]["bad"] == report["train"]["bad"]  # each file's report counts its own lines
    assert json.loads((run / "tokenizer_config.json").read_text())["chat_template"] == DEFAULT_TEMPLATE
    _, base, _, _ = read_weights(base_run)
    _, tuned, _, _ = read_weights(run, adapters="keep")
    adapters = tuned["params"].pop(lora.KEY)
    assert any(np.abs(np.asarray(b["b"])).max() > 0 for b in jax.tree.leaves(adapters, is_leaf=lambda x: "b" in x))
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(base["params"]), jax.tree.leaves(tuned["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert summary["trainable_params"] == lora.count({lora.KEY: adapters})
    # the optimizer's moments exist for the adapters only: the state is far smaller than full fine-tuning
    n_base = sum(np.size(x) for x in jax.tree.leaves(base["params"]))
    assert summary["train_state_bytes_per_device"] < 4 * (n_base + 3 * summary["trainable_params"]) * 1.05
    # the adapted model (folded) completes held-out prompts; figures are shares of the examples
    cc = CompleteConfig(file=str(data), n=4, max_new_tokens=4, max_bad_fraction=0.05)
    res = complete_run(EvalModel(run, progress=False), cc, 0)
    assert set(res["metrics"]) == {"exact", "first_line", "parses", "similarity"}
    assert all(0 <= m["value"] <= 1 and m["n"] == 4 for m in res["metrics"].values())
    assert res["bad_lines"] == report["train"]["bad"] and res["samples"][0]["reference"] == "0"


def test_complete_scores(monkeypatch):
    from open_r1_jax.eval import complete
    from open_r1_jax.eval.mc import mean_stderr

    assert complete._parses("def f():\n    return 1\n") and not complete._parses("  \n") and not complete._parses("def")
    assert complete._first_line("\ndef f(x):  \n    pass") == "def f(x):"
    assert mean_stderr([1.0, 0.0])["value"] == 0.5 and mean_stderr([1.0])["stderr"] == 0.0


def test_sft_refuses_bad_setups(base_run, tmp_path):
    from micro import micro_config

    bad = _write(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(instruct.InstructDataError, match="2 of 2 lines are malformed"):
        train(
            micro_config(
                "train.stage=sft", f"train.init_from={base_run}", f"sft.train_path={bad}", run_dir=tmp_path / "r1"
            )
        )
    with pytest.raises(ConfigError, match="model.max_seq_len"):
        train(
            micro_config("train.stage=sft", f"train.init_from={base_run}", "train.seq_len=128", run_dir=tmp_path / "r2")
        )


def test_distill_trains_a_smaller_student_from_a_frozen_teacher(base_run, tmp_path):
    from micro import micro_config

    from open_r1_jax.checkpoint import read_weights

    small = ["model.d_model=16", "model.drn.expert_ffn_dim=16", "model.moe.expert_ffn_dim=16"]
    run = tmp_path / "student"
    cfg = micro_config(
        *small,
        "train.stage=distill",
        f"distill.teacher={base_run}",
        "train.steps=2",
        "train.warmup_steps=0",
        "train.eval_every=2",
        "distill.temperature=2",
        run_dir=run,
    )
    summary = train(cfg)
    assert summary["eval_kl"] > 0 and np.isfinite(summary["eval_loss"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "kl" in r)  # both terms logged: loss = alpha T^2 kl + (1 - alpha) ce
    np.testing.assert_allclose(step["loss"], 0.5 * 4 * step["kl"] + 0.5 * step["ce"], rtol=1e-5)
    _, student, _, _ = read_weights(run)
    _, teacher, _, _ = read_weights(base_run)
    assert student["params"]["embed"].shape[1] == 16  # the student is its own, smaller model
    assert teacher["params"]["embed"].shape[1] == 32

    with pytest.raises(ConfigError, match=r"distill.teacher .* was trained on bytes"):
        train(
            micro_config(
                *small,
                "train.stage=distill",
                f"distill.teacher={base_run}",
                "data.tokenizer=bpe",
                "data.bpe_vocab_size=260",
                run_dir=tmp_path / "r1",
            )
        )
    with pytest.raises(ConfigError, match="must equal the teacher's"):
        train(
            micro_config(
                *small,
                "train.stage=distill",
                f"distill.teacher={base_run}",
                "model.vocab_size=300",
                run_dir=tmp_path / "r2",
            )
        )
    with pytest.raises(ConfigError, match="distill.teacher: required"):
        micro_config("train.stage=distill")


def test_distill_from_the_teacher_cache_trains_as_the_live_teacher(base_run, tmp_path):
    """distill.cache_teacher with every token kept (k >= V, float32) gives the live teacher's losses
    step for step; the cache is reused by a second run, survives resume, and refuses another stream."""
    from micro import micro_config

    from open_r1_jax.training.teacher_cache import TeacherCache

    def run(name, *extra):
        over = ["model.d_model=16", "model.drn.expert_ffn_dim=16", "model.moe.expert_ffn_dim=16"]
        over += ["train.stage=distill", f"distill.teacher={base_run}", "train.warmup_steps=0", "train.eval_every=2"]
        train(micro_config(*over, "train.steps=4", "distill.alpha=0.7", *extra, run_dir=tmp_path / name))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "kl" in r or "eval_kl" in r]

    cache = tmp_path / "cache"
    exact = ["distill.cache_teacher=true", "distill.cache_top_k=1000", "distill.cache_dtype=float32"]
    live, cached = run("live"), run("cached", *exact, f"distill.cache_dir={cache}")
    for a, b in zip(live, cached, strict=True):
        for key in ("loss", "kl", "ce", "eval_loss", "eval_kl"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=key)
    built = TeacherCache(cache)
    assert built.batches("train") == 4 and built.batches("eval") == 2
    stamp = (cache / "meta.json").stat().st_mtime_ns
    # a second student reads the same cache; checkpointed at step 2, resumed to 4: same losses
    run("again", *exact, f"distill.cache_dir={cache}", "train.checkpoint_every=2")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "4")  # as if the process died after step 2's checkpoint
    resumed = run("again", *exact, f"distill.cache_dir={cache}", "train.checkpoint_every=2")
    assert (cache / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    np.testing.assert_allclose(resumed[-1]["loss"], cached[-1]["loss"], rtol=1e-6)
    # a stream that is not the cached one stops the run (here: a tampered checksum)
    crc = np.load(cache / "train_crc.npy")
    np.save(cache / "train_crc.npy", crc + 1)
    with pytest.raises(RuntimeError, match="is not the batch the cache was built from"):
        run("other", *exact, f"distill.cache_dir={cache}")
