"""Multiple-choice questions in the MMLU layout, built deterministically from held-out text.

    python -m open_r1_jax.eval.mc_data --n 100 --dev 5 --out evals/data/next_line.jsonl

Each question shows ``CONTEXT_LINES`` consecutive non-blank lines of a held-out document (by default
the embedded corpus's held-out files, exactly those pretraining never sees) and asks which of four
lines really follows; the three distractors are other lines of the same document of similar length.
The known answer is the true next line. Records: ``{"question", "subject", "choices": [4 str],
"answer": 0-3}`` (JSONL, MMLU's fields); ``subject`` is the document's module name. ``--dev K``
writes K more questions, from other documents, to ``<out stem>_dev.jsonl`` (few-shot examples).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CONTEXT_LINES = 6
MIN_CHARS, MAX_CHARS = 12, 100  # answer lines: long enough to tell apart, short enough for one line


def _subject(name: str) -> str:
    parts = Path(name.split(":")[0]).with_suffix("").parts
    return "_".join(parts[-2:]) if len(parts) > 1 else parts[-1]


def document_questions(name: str, text: str, rng: np.random.Generator, limit: int) -> list[dict]:
    """Up to ``limit`` questions from one document (random positions, non-overlapping contexts)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    pool = sorted({ln for ln in lines if MIN_CHARS <= len(ln.strip()) <= MAX_CHARS})
    starts = rng.permutation(max(len(lines) - CONTEXT_LINES, 0))
    out, used = [], set()
    for s in starts.tolist():
        if len(out) == limit:
            break
        answer = lines[s + CONTEXT_LINES]
        span = set(range(s, s + CONTEXT_LINES + 1))
        if answer not in pool or span & used:
            continue
        near = [ln for ln in pool if ln != answer and abs(len(ln) - len(answer)) <= 20 and ln not in lines[s : s + 7]]
        if len(near) < 3:
            continue
        choices = [answer, *(near[i] for i in rng.choice(len(near), 3, replace=False))]
        order = rng.permutation(4)
        question = "\n".join(lines[s : s + CONTEXT_LINES]) + "\nWhich line comes next?"
        out.append({
            "question": question,
            "subject": _subject(name),
            "choices": [choices[i] for i in order],
            "answer": int(np.argmax(order == 0)),
        })  # fmt: skip
        used |= span
    return out


def build(documents: list[tuple[str, str]], n: int, seed: int = 0, per_document: int = 4) -> list[dict]:
    """``n`` questions, at most ``per_document`` from each (name, text), documents in a seeded order."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for i in rng.permutation(len(documents)).tolist():
        if len(out) >= n:
            break
        out += document_questions(*documents[i], rng, min(per_document, n - len(out)))
    if len(out) < n:
        raise ValueError(f"only {len(out)} questions could be built from {len(documents)} documents (asked for {n})")
    return out


def heldout_documents() -> list[tuple[str, str]]:
    """The embedded corpus's held-out documents (the same split as pretraining's default data)."""
    from open_r1_jax.config import DataConfig
    from open_r1_jax.data.sources import load_documents

    _, held, _ = load_documents(DataConfig())
    return [(d.name, d.text) for d in held]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_r1_jax.eval.mc_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--n", type=int, default=100, help="questions")
    parser.add_argument("--dev", type=int, default=0, help="few-shot questions, written to <stem>_dev.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = build(heldout_documents(), args.n + args.dev, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[args.dev :]))
    if args.dev:
        out.with_name(f"{out.stem}_dev{out.suffix}").write_text("".join(json.dumps(r) + "\n" for r in rows[: args.dev]))
    print(f"wrote {args.n} questions to {out}" + (f" and {args.dev} to {out.stem}_dev{out.suffix}" if args.dev else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
