"""``python -m open_r1_jax.eval``: the seed's three-level evaluation as one command.

    python -m open_r1_jax.eval --run DIR [--tasks ppl,mc,...] [--out DIR] [--completions FILE] [key=value ...]

DIR is a run directory (its latest checkpoint, or ``--step``), a checkpoint, an export, or a
transformers Llama / Mixtral folder. With no ``--tasks`` the embedded suite runs, offline:

    basic      ppl (perplexity, bits per byte), mc (MMLU-layout multiple choice), latency
    special    code (HumanEval pass@k), long (loss by position to 20K tokens, full vs LSH; a 20K
               generation)
    resources  generation throughput at batch 1 / 8 / 32, peak memory, the run's training figures,
               this evaluation's energy and CO2

Also (not in the default suite): complete (held-out prompts completed greedily against their
references: the check of supervised fine-tuning, ``eval/complete.py``); arith (held-out arithmetic,
greedy exact match and pass@k: the GRPO demo's figures, ``eval/arith.py``); vqa / aqa (questions about
held-out images / audio clips, normalised exact match beside a blind baseline with the media masked
out: the multimodal demo's figures, ``eval/vqa.py``, ``eval/aqa.py``).

Settings: ``key=value`` overrides of ``open_r1_jax/eval/config.py`` (``mc.file=mmlu/ mc.shots=5
code.n=10``). Outputs in ``--out`` (default DIR/eval): results.json, results.md (also printed) and
PNG plots. A task that fails is reported as failed and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

from tqdm import tqdm

DEFAULT = ("ppl", "mc", "latency", "code", "long", "resources")
KNOWN = (*DEFAULT, "vqa", "complete", "arith", "aqa")
log = logging.getLogger("open_r1_jax.eval")


def _mc(model, cfg) -> dict:
    from open_r1_jax.eval import mc, mc_data

    m = cfg.mc
    if m.file:
        data = mc.read_mc(m.file)
        dev = mc.read_mc(m.dev_file, "dev").rows if m.dev_file else []
        share = len(data.bad) / max(data.lines, 1)
        if share > m.max_bad_fraction or not data.rows:
            raise ValueError(
                f"mc.file: {len(data.bad)} of {data.lines} lines malformed (> mc.max_bad_fraction "
                f"{m.max_bad_fraction}); first: {data.bad[:3]}"
            )
        rows, source, bad = data.rows, m.file, data.bad
    else:
        built = mc_data.build(mc_data.heldout_documents(), m.n + m.shots, cfg.seed)
        dev, rows, source, bad = built[: m.shots], built[m.shots :], "next-line questions from held-out text", []
    out = mc.score(model, rows, dev, m.shots, m.batch)
    per, questions = out.pop("per_subject"), out.pop("questions")
    return {"metrics": out, "per_subject": per, "questions": questions, "config": {"data": source, "shots": m.shots},
            "bad_lines": bad, "target": {"acc": "> 0.65 (seed: MMLU accuracy)"}}  # fmt: skip


def run_task(name: str, model, lsh_model, cfg, args, started: float) -> dict:
    from open_r1_jax.eval import aqa, arith, code, complete, long, perf, ppl, vqa

    if name == "ppl":
        res = ppl.run(model, cfg.ppl)
        res["target"] = {"ppl": "< 15 (seed: perplexity)"}
        return res
    if name == "mc":
        return _mc(model, cfg)
    if name == "latency":
        return perf.latency(model, cfg.latency)
    if name == "code":
        return code.run(model, cfg.code, cfg.seed, args.completions or "", not args.no_progress)
    if name == "long":
        return long.run(model, lsh_model(), cfg.long, cfg.seed)
    if name == "complete":
        return complete.run(model, cfg.complete, cfg.seed, not args.no_progress)
    if name == "arith":
        return arith.run(model, cfg.arith, cfg.seed, not args.no_progress)
    if name == "vqa":
        return vqa.run(model, cfg.vqa, cfg.seed, not args.no_progress)
    if name == "aqa":
        return aqa.run(model, cfg.aqa, cfg.seed, not args.no_progress)
    if name == "resources":
        return perf.resources(model, cfg.resources, time.perf_counter() - started)
    raise ValueError(f"unknown task {name!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_r1_jax.eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", help="run dir, checkpoint, export or transformers Llama / Mixtral folder")
    p.add_argument("--step", type=int, help="checkpoint step of --run (default: the latest)")
    p.add_argument("--tasks", help=f"comma-separated, from {', '.join(KNOWN)} (default: {','.join(DEFAULT)})")
    p.add_argument("--out", help="output folder (default: RUN/eval)")
    p.add_argument("--completions", help="code: score these completions (JSONL task_id, completion); no model needed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="settings, e.g. mc.shots=5 code.n=10 (open_r1_jax/eval/config.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    from open_r1_jax.config import ConfigError, build_section
    from open_r1_jax.eval.config import EvalConfig

    tasks = [t.strip() for t in (args.tasks or ",".join(DEFAULT)).split(",") if t.strip()]
    unknown = [t for t in tasks if t not in KNOWN]
    if unknown:
        print(f"error: unknown task(s) {unknown}; known: {', '.join(KNOWN)}", file=sys.stderr)
        return 2
    try:
        cfg = build_section(EvalConfig, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    model_free = args.completions and tasks == ["code"]
    if not args.run and not model_free:
        print("error: --run is required (only --tasks code --completions FILE runs without a model)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model, lsh = None, None
    if not model_free:
        from open_r1_jax.eval.model import EvalModel

        try:
            model = EvalModel(args.run, args.step, progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        log.info("evaluating %r", model.pre)
        # long compares full with LSH attention: the same weights with the other attention
        other = dict(kind="lsh", lsh_layers=()) if model.config.attention.kind == "full" else {}
        if not other or model.config.attention.lsh_layers:  # an LSH model: "full" is the switched one
            lsh_model, model = model, EvalModel(args.run, args.step, not args.no_progress, kind="full", lsh_layers=())
            lsh = lambda: lsh_model
        else:
            lsh = lambda: EvalModel(args.run, args.step, not args.no_progress, **other)
    results = {"model": args.run or args.completions, "step": getattr(model and model.pre, "step", None),
               "config": {"tasks": tasks, "overrides": args.overrides}, "tasks": {}}  # fmt: skip
    failed = False
    for name in tqdm(tasks, desc="eval", disable=args.no_progress):
        t0 = time.perf_counter()
        try:
            res = run_task(name, model, lsh, cfg, args, started)
        except Exception as e:  # one task's failure is reported; the others still run
            log.error("%s failed: %s", name, e)
            log.debug("%s", traceback.format_exc())
            res, failed = {"error": f"{type(e).__name__}: {e}"}, True
        res["seconds"] = time.perf_counter() - t0
        results["tasks"][name] = res
        if "metrics" in res:
            log.info("%s: %s", name, ", ".join(f"{k} {v['value']:.4g}" for k, v in res["metrics"].items()))
    results["seconds"] = time.perf_counter() - started
    from open_r1_jax.eval.report import write

    out = Path(args.out) if args.out else Path(args.run or ".") / "eval"
    print(write(results, Path(args.run or "."), out))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(results['plots'])} plot(s)")
    return 1 if failed else 0
