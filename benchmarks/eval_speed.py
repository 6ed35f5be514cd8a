"""Multiple-choice scoring speed: ``python -m open_r1_jax.eval`` versus lm-eval-harness's ``hf`` model.

The same questions (next-line questions from the embedded text, MMLU layout), the same exported
model, on this machine, in one run: each command runs end to end in a subprocess (start-up, model
load, compilation and scoring included: what a user waits for). Prints questions per second, the
ratio (target: >= 3x lm-eval), and both accuracies (they must agree within 0.2 points).

    python benchmarks/eval_speed.py [--run runs/tiny] [--n 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="runs/tiny", help="run to export (train it with configs/tiny.yaml)")
    parser.add_argument("--n", type=int, default=1000, help="questions")
    parser.add_argument("--batch", type=int, default=16, help="batch size of both")
    parser.add_argument("--quick", action="store_true", help="100 questions")
    args = parser.parse_args()
    n = 100 if args.quick else args.n

    from open_r1_jax import export
    from open_r1_jax.eval import mc_data

    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    from open_r1_jax.config import DataConfig
    from open_r1_jax.data.sources import load_documents

    # a speed benchmark: the held-out files give ~600 questions, so the training files are used as well
    train, held, _ = load_documents(DataConfig())
    docs = [(d.name, d.text) for d in (*held, *train)]
    rows = mc_data.build(docs, n, seed=0, per_document=-(-n // len(docs)) + 2)
    (work / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if export.main(["--run", args.run, "--out", str(work / "hf")]) != 0:
        sys.exit(f"could not export {args.run}")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    ours_cmd = [sys.executable, "-m", "open_r1_jax.eval", "--run", str(work / "hf"), "--tasks", "mc"]
    ours_cmd += ["--out", str(work / "ours"), "--no-progress", f"mc.file={work / 'mc.jsonl'}", f"mc.batch={args.batch}"]
    lm_cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--device", "cpu", "--batch_size", str(args.batch)]
    lm_cmd += ["--model_args", f"pretrained={work / 'hf'},trust_remote_code=True,dtype=float32"]
    lm_cmd += [
        "--tasks",
        "next_line",
        "--include_path",
        str(ROOT / "evals" / "tasks"),
        "--output_path",
        str(work / "lm"),
    ]
    lm_cmd += ["--metadata", json.dumps({"mc_file": str(work / "mc.jsonl")})]
    ours_s, lm_s = timed(ours_cmd, env), timed(lm_cmd, env)
    ours_acc = json.loads((work / "ours" / "results.json").read_text())["tasks"]["mc"]["metrics"]["acc"]["value"]
    lm_acc = json.loads(next((work / "lm").rglob("results_*.json")).read_text())["results"]["next_line"]["acc,none"]
    print(f"{n} questions, model {args.run} exported to {work / 'hf'}")
    print(f"{'':24}{'seconds':>10}{'questions/s':>14}{'acc':>8}")
    print(f"{'open_r1_jax.eval':24}{ours_s:10.1f}{n / ours_s:14.1f}{ours_acc:8.3f}")
    print(f"{'lm-eval hf':24}{lm_s:10.1f}{n / lm_s:14.1f}{lm_acc:8.3f}")
    print(f"ratio {lm_s / ours_s:.2f}x (target >= 3x); accuracy difference {abs(ours_acc - lm_acc) * 100:.2f} points")
    emit("eval_speed", {"questions": n, "ours_s": ours_s, "lm_eval_s": lm_s, "ratio": lm_s / ours_s,
                        "ours_acc": ours_acc, "lm_eval_acc": lm_acc})  # fmt: skip


if __name__ == "__main__":
    main()
