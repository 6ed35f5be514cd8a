"""GRPO: the embedded arithmetic, rewards (built in, user file, failures), group advantages, prompt
files with bad lines, the stage end to end (generation, old and reference log-probs, TRL metrics,
held-out accuracy) and the evaluator's ``arith`` task."""

import json
import re

import numpy as np
import pytest

from open_r1_jax import rewards as R
from open_r1_jax.config import ConfigError
from open_r1_jax.data import arith
from open_r1_jax.data.chat import ChatTemplate
from open_r1_jax.data.instruct import InstructDataError
from open_r1_jax.data.prompts import PromptReport, read_prompts
from open_r1_jax.training.stages.grpo import group_advantages, keep_groups, process_advantages
from open_r1_jax.training.trainer import train


def test_arith_worked_answers_are_right_and_heldout_is_disjoint():
    train_set = arith.problems(3000, 0, False)
    held = arith.problems(300, 5, True)
    assert not {p["prompt"] for p in train_set} & {p["prompt"] for p in held}
    # the seed draws the training problems; every seed (and the evaluator) holds out the same ones
    assert held == arith.problems(300, 0, True) and held[:10] == arith.problems(10, 1, True)
    assert arith.problems(10, 1, False) != arith.problems(10, 0, False)
    for p in train_set[:500] + held:
        a, op, b = re.fullmatch(r"Q: (\d+)([+-])(\d+)\nA: ", p["prompt"]).groups()
        assert int(p["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        cols = [c.split("=")[1] for c in re.search("<think>(.*)</think>", p["completion"]).group(1).split(";")]
        assert int(cols[-1] + "".join(c[-1] for c in reversed(cols[:-1]))) == int(p["answer"])
        assert R.accuracy(None, [p["completion"]], [p["answer"]]) == [1.0]
        assert R.format_reward(None, [p["completion"]]) == [1.0]


def test_rewards_score_and_isolate_failures(tmp_path):
    assert R.accuracy(None, ["<answer> 12.0 </answer>", "<answer>12</answer><answer>3</answer>", "12"], ["12"] * 3) == [
        1.0,
        1.0,
        0.0,
    ]
    assert R.accuracy(None, ["<answer>Paris</answer>"], ["Paris"]) == [1.0]
    assert R.format_reward(
        None, [" <think>x</think>\n<answer>1</answer> ", "<answer>1</answer>", "<think></think>"]
    ) == [
        1.0,
        0.0,
        0.0,
    ]
    got = ["<answer>0482</answer>", "<answer>432</answer>", "<answer>0432</answer>", "0432", "<answer></answer>"]
    assert R.digits(None, got, ["0432"] * 5) == [0.75, 0.75, 1.0, 0.0, 0.0]  # right-aligned, over the longer
    assert R.length(None, ["a"] * 3, completion_lengths=[10, 52, 64], max_new_tokens=64) == [0.0, -0.25, -1.0]
    user = tmp_path / "mine.py"
    user.write_text(
        "def picky(prompts, completions, **kw):\n"
        "    return [1 / (len(c) - 3) for c in completions]  # raises on 3-character completions\n"
        "def nan(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n"
    )
    fns = R.load_rewards(("picky", "nan", "format"), (1.0, 2.0, 0.5), str(user))
    assert [(n, w) for n, _, w in fns] == [("picky", 1.0), ("nan", 2.0), ("format", 0.5)]
    scores, failures = R.score(fns, ["p"] * 3, ["abcd", "abc", "abcde"])
    np.testing.assert_allclose(scores[:, 0], [1.0, 0.0, 0.5])  # the raising completion scores 0 ...
    assert failures == {"picky": 1, "nan": 3}  # ... and is counted, as are non-numbers
    with pytest.raises(ConfigError, match=r"grpo.rewards\[0\]: unknown reward 'nope'"):
        R.load_rewards(("nope",), (), "")
    with pytest.raises(ConfigError, match="2 weights for 1"):
        R.load_rewards(("format",), (1.0, 2.0), "")
    with pytest.raises(ConfigError, match="not found"):
        R.load_rewards(("format",), (), str(tmp_path / "missing.py"))


def test_arith_steps_scores_each_column_and_the_answer(tmp_path):
    prompt, ref = "Q: 347+085\nA: ", "432"
    right = "<think>7+5+0=12;4+8+1=13;3+0+1=04</think><answer>0432</answer>"
    carry = "<think>7+5+0=12;4+8+0=12;3+0+1=04</think><answer>0422</answer>"  # the middle column drops its carry
    cut = "<think>7+5+0=12;4+8"  # cut off inside the second column: no answer step of its own
    steps = R.arith_steps([prompt] * 3, [right, carry, cut], [ref] * 3)
    assert steps[0] == [(15, 1.0), (24, 1.0), (33, 1.0), (len(right), 1.0)]
    assert [r for _, r in steps[1]] == [1.0, 0.0, 1.0, 0.0] and right[:24].endswith("4+8+1=13")
    assert steps[2] == [(15, 1.0), (len(cut), 0.0), (len(cut), 0.0)]
    user = tmp_path / "steps.py"
    user.write_text(
        "def halves(prompts, completions, **kw):\n"
        "    return [[(len(c) // 2, 0.5), (len(c), 1 / (len(c) - 3))] for c in completions]  # 3 chars: raises\n"
        "def backwards(prompts, completions, **kw):\n    return [[(5, 1.0), (2, 0.0)] for c in completions]\n"
    )
    fn = R.load_process_reward("halves", str(user))
    steps, failed = R.score_steps(fn, ["p"] * 2, ["abcdef", "abc"])
    assert steps == [[(3, 0.5), (6, pytest.approx(1 / 3))], []] and failed == 1  # the raising one: no steps, counted
    assert R.score_steps(R.load_process_reward("backwards", str(user)), ["p"], ["abcdef"]) == ([[]], 1)
    assert R.load_process_reward("", "") is None
    with pytest.raises(ConfigError, match="grpo.process_reward: unknown process reward 'nope'; accepted: arith_steps"):
        R.load_process_reward("nope", "")


def test_process_advantages_sum_the_normalised_rewards_of_later_steps():
    # group of two: row 0 steps end at tokens 2 and 5 (rewards 1, 0), row 1 at 1 and 4 (1, 1); mean 0.75
    steps = [(np.asarray([2, 5]), np.asarray([1.0, 0.0])), (np.asarray([1, 4]), np.asarray([1.0, 1.0]))]
    a = process_advantages(steps, [7, 5], 2, scale=False)
    np.testing.assert_allclose(a[0], [-0.5, -0.5, -0.5, -0.75, -0.75, -0.75, 0.0])  # after the last step: 0
    np.testing.assert_allclose(a[1], [0.5, 0.5, 0.25, 0.25, 0.25])
    scaled = process_advantages(steps, [7, 5], 2, scale=True)
    np.testing.assert_allclose(scaled[1], a[1] / (np.std([1, 0, 1, 1], ddof=1) + 1e-4), rtol=1e-6)
    solved = [(np.asarray([0]), np.asarray([1.0]))] * 2  # equal steps teach nothing
    assert all(np.all(x == 0) for x in process_advantages(solved, [3, 3], 2, scale=True))


def test_group_advantages_are_relative_to_the_group():
    r = np.asarray([1, 0, 0, 0, 1, 1, 1, 1], np.float32)
    adv, std = group_advantages(r, 4, scale=True)
    np.testing.assert_allclose(adv[:4].sum(), 0, atol=1e-6)
    np.testing.assert_allclose(adv[0], 0.75 / (np.std([1, 0, 0, 0], ddof=1) + 1e-4), rtol=1e-5)
    assert np.all(adv[4:] == 0) and np.all(std[4:] == 0) and std[0] > 0  # a solved group teaches nothing
    np.testing.assert_allclose(group_advantages(r, 4, scale=False)[0][:4], [0.75, -0.25, -0.25, -0.25])


def test_dynamic_sampling_keeps_the_groups_whose_rewards_differ():
    pool = np.asarray([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)  # 4 groups of G=3
    np.testing.assert_array_equal(keep_groups(pool, 2), [3, 4, 5, 9, 10, 11])  # groups 1 and 3, in order
    # too few groups differ: the rest are filled in order, each group's rows stay together
    np.testing.assert_array_equal(keep_groups(pool, 3), [0, 1, 2, 3, 4, 5, 9, 10, 11])


def test_prompt_files_report_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "1+1=", "answer": 2},
        {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"},
        "{oops",
        {"prompt": "x"},
        {"prompt": 3, "answer": "1"},
    ]
    path.write_bytes(("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode() + b"\xff\n")
    report = PromptReport()
    found = read_prompts(path, ChatTemplate(), report)  # the line of bytes that are not UTF-8 is counted too
    assert found[0] == ("1+1=", "2") and found[1][0].endswith("<|im_start|>assistant\n")
    assert [b.split(": ")[0] for b in report.bad] == [f"{path}:3", f"{path}:4", f"{path}:5", f"{path}:6"]
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(InstructDataError, match=r"no usable line \(1 of 1 lines are malformed; first: .*:1: needs"):
        read_prompts(path, ChatTemplate(), PromptReport())
    with pytest.raises(FileNotFoundError, match="grpo: prompt file .* does not exist"):
        read_prompts(tmp_path / "missing.jsonl", ChatTemplate(), PromptReport())


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    from micro import micro_config

    run = tmp_path_factory.mktemp("grpo") / "cold"
    train(micro_config("train.stage=sft", "sft.demo=arith", "sft.demo_examples=200", "sft.demo_eval_examples=8",
                       "train.steps=3", "train.eval_every=0", run_dir=run))  # fmt: skip
    return run


def test_grpo_trains_with_trl_metrics_and_heldout_accuracy(cold_start, tmp_path):
    from micro import micro_config

    from open_r1_jax.eval.cli import main as eval_main

    user = tmp_path / "r.py"
    user.write_text("def flaky(prompts, completions, **kw):\n    return [1 / ('<' in c) for c in completions]\n")
    run = tmp_path / "grpo"
    cfg = micro_config(
        "train.stage=grpo", f"train.init_from={cold_start}", "train.steps=4", "train.global_batch=8",
        "train.seq_len=64", "train.eval_every=4", "train.lr=1e-3", "grpo.num_generations=4", "grpo.max_new_tokens=24",
        "grpo.num_iterations=2", "grpo.beta=0.1", "grpo.oversample=2", "grpo.demo_examples=50",
        "grpo.demo_eval_examples=6",
        "grpo.rewards=[accuracy,format,length,flaky]", f"grpo.reward_file={user}", "grpo.stop=[</answer>]",
        "grpo.process_reward=arith_steps", run_dir=run,
    )  # fmt: skip
    summary = train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if "reward" in r)
    for key in ("reward", "reward_std", "rewards/accuracy", "rewards/format", "rewards/flaky", "rewards/arith_steps",
                "kl", "clip_ratio",
                "completion_length", "frac_reward_zero_std", "pool_frac_reward_zero_std"):  # fmt: skip
        assert key in logged and np.isfinite(logged[key]), key
    assert 0 < logged["completion_length"] <= 25 and 0 <= logged["frac_reward_zero_std"] <= 1
    assert rows[0]["step"] == 0 and "eval_accuracy" in rows[0] and "eval_accuracy" in summary
    assert logged["kl"] >= 0 and rows[-1]["kl"] > 0  # the policy moved away from the reference
    with pytest.raises(ConfigError, match="must be >= 2 and divide train.global_batch"):
        micro_config("train.stage=grpo", f"train.init_from={cold_start}", "grpo.num_generations=3")
    with pytest.raises(ConfigError, match="grpo.process_weight: got 0.0"):
        micro_config(
            "train.stage=grpo",
            f"train.init_from={cold_start}",
            "grpo.process_reward=x",
            "grpo.process_weight=0",
        )
    with pytest.raises(ConfigError, match="grpo.oversample"):
        micro_config("train.stage=grpo", f"train.init_from={cold_start}", "grpo.oversample=0")
    with pytest.raises(ConfigError, match="train.init_from: required"):
        micro_config("train.stage=grpo")

    out = tmp_path / "eval"
    args = ["--run", str(run), "--tasks", "arith", "--out", str(out), "--no-progress", "arith.n=6", "arith.samples=2",
            "arith.k=2", "arith.max_new_tokens=24"]  # fmt: skip
    assert eval_main(args) == 0
    metrics = json.loads((out / "results.json").read_text())["tasks"]["arith"]["metrics"]
    assert set(metrics) == {"greedy", "format", "pass@1", "pass@2"}
    assert metrics["pass@1"]["value"] <= metrics["pass@2"]["value"]
