"""Time per GRPO step, split into generation, reward scoring, reference / old-policy log-probs and the
update, for G = 4, 8, 16 completions per prompt (``--prompts`` per step, 8 by default; the demo's lengths).
"trained" counts the completions a step trains on (prompts x G); "sampled" those it generates
(``grpo.oversample`` times as many: DAPO's dynamic sampling keeps the groups whose rewards differ).

    python benchmarks/grpo_step.py [--cold-start runs/arith_sft] [--steps 6] [--prompts 8] [key=value ...]
    python benchmarks/grpo_step.py --groups 4 --prompts 64 --steps 4     # the demo config's own step

Each G trains ``--steps`` steps of ``configs/grpo_arith.yaml`` in one process (the first generation,
with its compilation, is left out); the update is the train time not spent on the host side.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-start", default="runs/arith_sft", help="the policy to start from (train.init_from)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--groups", default="4,8,16")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (train.global_batch = prompts x G)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if not Path(args.cold_start).exists():
        sys.exit(f"{args.cold_start} not found: python -m open_r1_jax.train --config configs/arith_sft.yaml")

    from open_r1_jax.config import load_config
    from open_r1_jax.training.stages.grpo import GRPO
    from open_r1_jax.training.trainer import train

    rows = {}
    for g in map(int, args.groups.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            over = [f"train.init_from={args.cold_start}", f"grpo.num_generations={g}",
                    f"train.global_batch={args.prompts * g}", f"train.steps={args.steps}", "train.warmup_steps=0",
                    "train.eval_every=0", "train.log_every=1", "run.progress=false",
                    "grpo.demo_eval_examples=1", f"run.dir={tmp}/run", *args.overrides]  # fmt: skip
            stage = GRPO(load_config("configs/grpo_arith.yaml", over))
            summary = train(stage.cfg, stage)
        later = stage.timings[1:]  # the first generation batch compiles and runs outside the timed windows
        host = {k: sum(t[k] for t in later) / len(later) for k in later[0]}
        update = (summary["train_seconds"] - sum(sum(t.values()) for t in later)) / args.steps
        total = sum(host.values()) + update
        sampled = args.prompts * g * stage.cfg.grpo.oversample  # dynamic sampling draws extra groups
        rows[g] = {**host, "update_s": update, "step_s": total, "sampled": sampled}
    print(f"\n{'G':>3} {'trained':>8} {'sampled':>8} {'generate s':>11} {'score s':>8} {'logps s':>8} {'update s':>9} "
          f"{'step s':>7} {'generate %':>10}")  # fmt: skip
    for g, r in rows.items():
        share = 100 * r["generate_s"] / r["step_s"]
        print(f"{g:>3} {args.prompts * g:>8} {r['sampled']:>8} {r['generate_s']:>11.3f} {r['score_s']:>8.3f} "
              f"{r['logps_s']:>8.3f} {r['update_s']:>9.3f} {r['step_s']:>7.3f} {share:>9.0f}%")  # fmt: skip
    emit("grpo_step", {f"G{g}_{k}": v for g, r in rows.items() for k, v in r.items()})


if __name__ == "__main__":
    main()
