"""Distillation demo: a quarter-size student distilled from ``runs/tiny`` vs the same student from scratch.

Three runs of ``configs/distill_tiny.yaml``'s student on the same data, in one process (one machine
state): distilled (``train.stage: distill``, the teacher's top-k log-probs read from its cache), from
scratch for the same steps, and from scratch for the distillation's train time (more steps: a step
that reads the cache still costs a little more). The cache's one-off build time (the teacher's
forward over the run's batches, reused by later runs of the same stream) is printed beside them.
Prints the held-out loss of each at every evaluation and plots the curves against steps and against
train seconds (``RUN/distill_vs_scratch.png``).

    python benchmarks/distill_demo.py [--config configs/distill_tiny.yaml] [--quick] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402


def curve(run: Path) -> tuple[list[int], list[float], list[float]]:
    """(steps, train seconds so far, held-out loss) at each evaluation, from ``metrics.jsonl``. Train
    seconds add up each log window's tokens over its measured tokens/s."""
    steps, secs, losses, t, seen = [], [], [], 0.0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("tokens_per_sec"):
            t += (row["tokens_seen"] - seen) / row["tokens_per_sec"]
            seen = row["tokens_seen"]
        if "eval_loss" in row:
            steps.append(row["step"])
            secs.append(t)
            losses.append(row["eval_loss"])
    return steps, secs, losses


def _cache_seconds(cfg, run: Path) -> float:
    """Seconds the teacher took to build the cache this run read (0 without a cache: the teacher ran in
    the steps, inside train_seconds)."""
    from open_r1_jax.training.teacher_cache import TeacherCache, cache_directory

    return TeacherCache(cache_directory(cfg, run)).meta["build_seconds"] if cfg.distill.cache_teacher else 0.0


def plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (steps, secs, losses) in curves.items():
        axes[0].plot(steps, losses, marker="o", label=name)
        axes[1].plot(secs, losses, marker="o", label=name)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("train seconds")
    for ax in axes:
        ax.set_ylabel("held-out loss (nats / byte)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("student (1/4 of the teacher's active parameters): distilled vs from scratch")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/distill_tiny.yaml")
    ap.add_argument("--quick", action="store_true", help="30 steps (a smoke run of the script)")
    ap.add_argument("--overwrite", action="store_true", help="retrain: delete the three run directories first")
    ap.add_argument("overrides", nargs="*", help="config overrides for all three runs, e.g. train.steps=600")
    args = ap.parse_args()

    from open_r1_jax.config import load_config
    from open_r1_jax.training.trainer import train

    quick = ["train.steps=30", "train.warmup_steps=3", "train.eval_every=10", "train.eval_batches=2"]
    extra = (quick if args.quick else []) + list(args.overrides) + ["run.progress=false"]
    base = load_config(args.config, extra)
    root = Path(base.run.dir)
    runs = {"distilled": root, "scratch, same steps": root.parent / f"{root.name}_scratch"}
    runs["scratch, same time"] = root.parent / f"{root.name}_scratch_time"
    existing = [str(r) for r in runs.values() if r.exists()]
    if existing and not args.overwrite:  # a run directory resumes: its figures would not be this run's
        sys.exit(f"{', '.join(existing)} exist(s); pass --overwrite to delete and retrain them")
    for r in existing:
        shutil.rmtree(r)
    summaries = {"distilled": train(base)}
    scratch = ["train.stage=pretrain", f"run.dir={runs['scratch, same steps']}"]
    summaries["scratch, same steps"] = train(load_config(args.config, extra + scratch))
    scratch_s = summaries["scratch, same steps"]["train_seconds"]
    ratio = summaries["distilled"]["train_seconds"] / scratch_s
    build = _cache_seconds(base, root)
    steps = round(base.train.steps * ratio)
    scratch_time = ["train.stage=pretrain", f"train.steps={steps}", f"run.dir={runs['scratch, same time']}"]
    summaries["scratch, same time"] = train(load_config(args.config, extra + scratch_time))

    curves = {name: curve(run) for name, run in runs.items()}
    plot(curves, root / "distill_vs_scratch.png")
    print(f"\n{'run':<22} {'steps':>6} {'train s':>8} {'wall s':>8} {'held-out loss':>14}  curve (every eval)")
    for name, s in summaries.items():
        c = curves[name][2]
        print(
            f"{name:<22} {s['steps']:>6} {s['train_seconds']:>8.1f} {s['wall_seconds']:>8.1f} "
            f"{s['eval_loss']:>14.4f}  {' '.join(f'{x:.3f}' for x in c)}"
        )
    d, same, timed = (summaries[k]["eval_loss"] for k in runs)
    print(
        f"\ndistilled vs scratch: {d:.4f} vs {same:.4f} (same steps; a distillation step costs {ratio:.2f}x), "
        f"{timed:.4f} (same train time: {steps} steps); the teacher cache took {build:.0f} s to build (once)"
    )
    print(f"plot: {root / 'distill_vs_scratch.png'}")
    emit(
        "distill_demo",
        {
            "distilled_loss": d,
            "scratch_same_steps_loss": same,
            "scratch_same_time_loss": timed,
            "scratch_same_time_steps": steps,
            "distill_step_cost_ratio": ratio,
            "teacher_cache_build_seconds": build,
            "teacher_kl": summaries["distilled"].get("eval_kl"),
        },
    )


if __name__ == "__main__":
    main()
