"""Outputs of an evaluation: ``results.json``, ``results.md`` (the table also printed) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def table(results: dict) -> str:
    lines = [f"# Evaluation of {results['model']}", "", "| task | metric | value | ± | n |", "|---|---|---:|---:|---:|"]
    for task, res in results["tasks"].items():
        if "error" in res:
            lines.append(f"| {task} | **failed** | {res['error']} | | |")
            continue
        if "skipped" in res:
            lines.append(f"| {task} | skipped | {res['skipped']} | | |")
            continue
        for name, m in res["metrics"].items():
            lines.append(f"| {task} | {name} | {_fmt(m['value'])} | {_fmt(m.get('stderr'))} | {_fmt(m.get('n'))} |")
    notes = [f"- {t}: {r['note']}" for t, r in results["tasks"].items() if r.get("note")]
    targets = [f"- {t}: {k} {v}" for t, r in results["tasks"].items() for k, v in (r.get("target") or {}).items()]
    if targets:
        lines += ["", "Seed targets:", *targets]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", f"{results['seconds']:.0f} s in all; per task: "
              + ", ".join(f"{t} {r.get('seconds', 0):.0f} s" for t, r in results["tasks"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def _training_curve(path: Path) -> list[dict]:
    for d in (path, *path.parents[:3]):
        if (d / "metrics.jsonl").is_file():
            return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plots(results: dict, model_path: Path, out: Path) -> list[str]:
    records = _training_curve(model_path)
    tasks = results["tasks"]
    wanted = records or any(k in tasks for k in ("long", "latency", "code"))
    if not wanted:
        return []  # matplotlib takes half a second to import
    plt = _pyplot()
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if train:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*train), label="train loss")
        if held:
            ax.plot(*zip(*held), "o-", label="held-out loss")
        ax.set(xlabel="step", ylabel="loss (nats / token)", title="training")
        ax.legend()
        save(fig, "training_loss.png")
    if "by_position" in tasks.get("long", {}):
        bp = tasks["long"]["by_position"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind in ("full", "lsh"):
            ax.plot([(i + 0.5) * bp["bucket"] / 1000 for i in range(len(bp[kind]))], bp[kind], "o-", label=kind)
        ax.set(xlabel="position (K tokens)", ylabel="mean loss (nats / token)", title="loss by position")
        ax.legend()
        save(fig, "loss_by_position.png")
        roll = tasks["long"]["generation"]["rolling_distinct_4"]
        if roll:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([i + 1 for i in range(len(roll))], roll, "o-")
            ax.set(xlabel="generated tokens (K)", ylabel="distinct 4-grams per 1K window", title="long generation")
            save(fig, "long_generation.png")
    if "samples" in tasks.get("latency", {}):
        s = tasks["latency"]["samples"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        axes[0].hist([x * 1e3 for x in s["ttft_s"]], bins=20)
        axes[0].set(xlabel="ms", title="time to first token")
        axes[1].hist([x * 1e3 for x in s["tpot_s"]], bins=40)
        axes[1].set(xlabel="ms", title="time per output token")
        save(fig, "latency.png")
    code = tasks.get("code", {}).get("metrics", {})
    ks = [k for k in code if k.startswith("pass@")]
    if ks:
        fig, ax = plt.subplots(figsize=(4, 3.5))
        ax.bar(ks, [code[k]["value"] for k in ks], yerr=[code[k].get("stderr") or 0 for k in ks])
        ax.set(ylim=(0, 1), ylabel="HumanEval pass@k", title="code")
        save(fig, "pass_at_k.png")
    return written


def write(results: dict, model_path: Path, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(results, model_path, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    md = table(results)
    (out / "results.md").write_text(md)
    return md
