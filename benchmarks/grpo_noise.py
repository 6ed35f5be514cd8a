"""How much of a GRPO update is noise: measured two ways from the cold start (issue: GRPO).

    python benchmarks/grpo_noise.py [--cold-start runs/arith_sft] [--batches 24] [--steps 50] [key=value ...]

1. **Gradient noise.** ``--batches`` independent generation batches of ``configs/grpo_arith.yaml``
   (P prompts x G samples each, as a step draws them) from the cold start, and the GRPO loss's gradient
   for each. Writing each as g_k = s + n_k (a shared signal, independent noise), the mean pairwise
   cosine is c ~ |s|^2 / (|s|^2 + |n|^2): the noise's energy is 1/c - 1 times the signal's in one
   step's gradient, and the sum of N steps' gradients has as much signal as noise at N ~ 1/c - 1.
2. **A control run.** ``--steps`` GRPO steps of the config beside the same run with each group's
   advantages shuffled among its samples (the same magnitudes, no signal), held-out greedy accuracy
   every ``--eval-every`` steps: what an update of this size does without its signal.

Overrides apply to both parts (for example ``train.lr=2e-5``). The figures in docs/grpo.md (cosine 0.023)
were measured with the 64-row config of the time: ``train.global_batch=64 grpo.num_generations=8
train.lr=5e-5 train.min_lr=5e-6 train.warmup_steps=20``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402


def gradient_noise(cfg, cold_start: str, batches: int) -> dict:
    """-> the pairwise cosines' mean and sd, the noise / signal energy of one step, and more (see main)."""
    import jax
    import numpy as np

    from open_r1_jax import load_pretrained
    from open_r1_jax.training.stages.grpo import GRPO
    from open_r1_jax.training.trainer import train

    stage = GRPO(cfg)
    train(stage.cfg, stage)  # one step: sets the stage up (prompts, rewards, generator, the mesh)
    weights = load_pretrained(cold_start)
    loss = lambda p, ms, b: stage.loss_fn(p, ms, b, None)[0]  # noqa: E731
    grad = jax.jit(jax.grad(loss))
    flat, rewards = [], []
    for k in range(batches):  # the sampling seed follows the step: independent batches
        state = {"params": weights.params, "model_state": weights.model_state, "step": np.int32(1000 + k)}
        host = stage.generation_batch(state)
        rewards.append(float(np.mean(host["rewards/accuracy"])) if "rewards/accuracy" in host else float("nan"))
        batch = stage.put(host)
        batch.update(denominator=stage.count(batch), n_micro=1)
        g = grad(weights.params, weights.model_state, batch)
        flat.append(np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)]))
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    cos = [cosine(a, b) for a, b in combinations(flat, 2)]
    half = batches // 2
    c = statistics.mean(cos)
    return {
        "rows": int(host["advantages"].shape[0]),
        "pairwise_cos": c,
        "pairwise_cos_sd": statistics.stdev(cos),
        "noise_over_signal": 1 / c - 1 if c > 0 else None,  # None: no signal resolved
        "half_means_cos": cosine(np.mean(flat[:half], 0), np.mean(flat[half:], 0)),
        "grad_norm": float(statistics.mean(np.linalg.norm(f) for f in flat)),
        "accuracy_reward": statistics.mean(rewards),
    }


def control_runs(cfg, seed: int) -> dict:
    """-> {"real" | "shuffled": [(step, held-out greedy accuracy)]}."""
    import dataclasses

    import numpy as np

    from open_r1_jax.training.stages.grpo import GRPO
    from open_r1_jax.training.trainer import train

    class Shuffled(GRPO):
        """GRPO whose advantages are permuted within each group: an update of the same size, no signal."""

        rng = np.random.default_rng(seed)

        def generation_batch(self, state):
            b = super().generation_batch(state)
            groups = b["advantages"].reshape(-1, self.cfg.grpo.num_generations)
            b["advantages"] = self.rng.permuted(groups, axis=1).reshape(-1)
            return b

    curves = {}
    for name, kind in (("real", GRPO), ("shuffled", Shuffled)):
        run = dataclasses.replace(cfg.run, dir=f"{cfg.run.dir}_{name}")
        stage = kind(dataclasses.replace(cfg, run=run))
        train(stage.cfg, stage)
        rows = [json.loads(x) for x in Path(run.dir, "metrics.jsonl").read_text().splitlines()]
        curves[name] = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-start", default="runs/arith_sft", help="the policy to start from (train.init_from)")
    ap.add_argument("--config", default="configs/grpo_arith.yaml")
    ap.add_argument("--batches", type=int, default=24, help="independent generation batches for the gradients")
    ap.add_argument("--steps", type=int, default=50, help="steps of each control run (0: no control runs)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.batches < 3:
        ap.error(f"--batches {args.batches}: the cosines and their sd need at least 3 batches")
    if not Path(args.cold_start).exists():
        sys.exit(f"{args.cold_start} not found: python -m open_r1_jax.train --config configs/arith_sft.yaml")

    from open_r1_jax.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        base = [f"train.init_from={args.cold_start}", "run.progress=false", *args.overrides]
        one = ["train.steps=1", "train.warmup_steps=0", "train.eval_every=0", "grpo.demo_eval_examples=1"]
        cfg = load_config(args.config, [*base, *one, f"run.dir={tmp}/noise"])
        noise = gradient_noise(cfg, args.cold_start, args.batches)
        ratio = noise["noise_over_signal"]
        verdict = (
            "no signal resolved (cosine <= 0)"
            if ratio is None
            else f"noise energy / signal energy ~ {ratio:.0f} per step, so the summed updates are "
            f"signal-dominated after ~{ratio:.0f} steps"
        )
        print(
            f"\n{noise['rows']} rows per step: mean pairwise gradient cosine {noise['pairwise_cos']:.4f} "
            f"(sd {noise['pairwise_cos_sd']:.4f} over {args.batches * (args.batches - 1) // 2} pairs); {verdict}; "
            f"cosine of the means of two halves {noise['half_means_cos']:.3f}; "
            f"accuracy reward of the samples {noise['accuracy_reward']:.3f}"
        )
        curves = {}
        if args.steps:
            over = [*base, f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"run.dir={tmp}/run"]
            curves = control_runs(load_config(args.config, over), seed=0)
            print(f"\n{'step':>5} {'greedy, GRPO':>13} {'greedy, shuffled advantages':>28}")
            for (step, real), (_, shuffled) in zip(curves["real"], curves["shuffled"], strict=True):
                print(f"{step:>5} {real:>13.3f} {shuffled:>28.3f}")
    emit("grpo_noise", {**noise, **{f"{k}_greedy": [a for _, a in v] for k, v in curves.items()}})


if __name__ == "__main__":
    main()
