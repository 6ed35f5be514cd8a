"""``mc``: multiple choice in the MMLU layout, scored as lm-eval-harness scores MMLU.

Files: JSONL with ``question``, ``subject``, ``choices`` (4 strings), ``answer`` (0-3); or MMLU's
original CSV (no header: question, A, B, C, D, answer letter; the subject is the file name less
``_test`` / ``_dev`` / ``_val``), a file or a folder of them. A malformed line is counted and reported
with ``file:line``; the task fails when they exceed ``mc.max_bad_fraction`` of the lines.

Prompt (lm-eval's MMLU template): "The following are multiple choice questions (with answers) about
{subject}.\\n\\n", then k solved dev examples ("{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: X" and a
blank line), then the question ending in "Answer:". The prediction is the letter whose " X" has the
highest log-likelihood. Reported: accuracy per subject, micro (over questions) and macro (over
subjects) averages, each with its standard error.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCD"


@dataclass
class MCData:
    rows: list[dict] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # "file:line: why"
    lines: int = 0


def _check(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("question"), str) or not isinstance(row.get("subject", ""), str):
        return "question and subject must be strings"
    ch = row.get("choices")
    if not (isinstance(ch, list) and len(ch) == 4 and all(isinstance(c, str) for c in ch)):
        return "choices must be a list of 4 strings"
    if row.get("answer") not in (0, 1, 2, 3) or isinstance(row.get("answer"), bool):
        return f"answer must be 0-3 (got {row.get('answer')!r})"
    return None


def _read_jsonl(path: Path, data: MCData) -> None:
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        data.lines += 1
        try:
            row = json.loads(line)
        except ValueError as e:
            data.bad.append(f"{path}:{i}: not JSON ({e})")
            continue
        why = _check(row)
        if why:
            data.bad.append(f"{path}:{i}: {why}")
            continue
        data.rows.append({"question": row["question"], "subject": row.get("subject", ""), "choices": row["choices"],
                          "answer": row["answer"]})  # fmt: skip


def _read_csv(path: Path, data: MCData) -> None:
    subject = path.stem
    for suffix in ("_test", "_dev", "_val"):
        subject = subject.removesuffix(suffix)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for i, rec in enumerate(csv.reader(f), 1):
            if not rec:
                continue
            data.lines += 1
            if len(rec) != 6 or rec[5].strip().upper() not in LETTERS:
                data.bad.append(f"{path}:{i}: expected 6 fields (question, A, B, C, D, answer letter A-D)")
                continue
            row = {"question": rec[0], "subject": subject, "choices": rec[1:5]}
            data.rows.append({**row, "answer": LETTERS.index(rec[5].strip().upper())})


def read_mc(spec: str, split: str = "test") -> MCData:
    """A JSONL or CSV file, or a folder of ``*_{split}.csv`` / ``*.jsonl`` files."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob(f"*_{split}.csv")) or sorted(path.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"mc: {path} holds no *_{split}.csv and no *.jsonl file")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"mc: {path} not found (a JSONL or CSV file, or a folder of them)")
    data = MCData()
    for f in files:
        (_read_csv if f.suffix == ".csv" else _read_jsonl)(f, data)
    return data


def example(row: dict) -> str:
    return row["question"].strip() + "".join(f"\n{x}. {c}" for x, c in zip(LETTERS, row["choices"])) + "\nAnswer:"


def prompt(row: dict, shots: list[dict]) -> str:
    subject = row["subject"].replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(f"{example(s)} {LETTERS[s['answer']]}\n\n" for s in shots) + example(row)


def pick_shots(dev: list[dict], subject: str, k: int) -> list[dict]:
    """The first k dev examples of the subject (MMLU's dev split), else the first k of the file."""
    if k == 0:
        return []
    same = [d for d in dev if d["subject"] == subject]
    chosen = (same if len(same) >= k else dev)[:k]
    if len(chosen) < k:
        raise ValueError(f"mc.shots={k}: the dev file has only {len(chosen)} example(s)")
    return chosen


def encode_requests(tokenizer, contexts: list[str]) -> list[tuple[list[int], list[int]]]:
    """(context, " X") for each context and letter, split as lm-eval splits them: encode the whole string
    and the context alone, and cut (BPE may merge across the seam). One batched call per kind of string."""
    ctx_ids = tokenizer.encode_batch(contexts)
    whole_ids = tokenizer.encode_batch([c + f" {x}" for c in contexts for x in LETTERS])
    out = []
    for i, whole in enumerate(whole_ids):
        ctx = ctx_ids[i // len(LETTERS)].tolist()
        out.append((ctx, whole.tolist()[len(ctx) :]))
    return out


def mean_stderr(values: list[float]) -> dict:
    """``{"value", "stderr", "n"}`` of a list of per-example scores (stderr 0 for one example)."""
    return {"value": sum(values) / len(values), "stderr": stderr(values) if len(values) > 1 else 0.0, "n": len(values)}


def stderr(values: list[float]) -> float:
    """Standard error of the mean with the sample variance (lm-eval's ``mean_stderr``)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def score(model, rows: list[dict], dev: list[dict], shots: int, batch: int) -> dict:
    """Accuracies: ``acc`` (micro), ``acc_macro``, ``per_subject`` (each with stderr and n), and per question
    ``questions`` (the four log-likelihoods, the prediction, the answer) in file order."""
    contexts = [prompt(row, pick_shots(dev, row["subject"], shots)) for row in rows]
    ll = model.loglikelihood(encode_requests(model.tokenizer, contexts), batch)
    correct, questions = [], []
    by_subject: dict[str, list[float]] = {}
    for q, row in enumerate(rows):
        scores = ll[4 * q : 4 * q + 4]
        pred = max(range(4), key=scores.__getitem__)
        ok = float(pred == row["answer"])
        correct.append(ok)
        questions.append({"loglikelihoods": scores, "prediction": pred, "answer": row["answer"]})
        by_subject.setdefault(row["subject"], []).append(ok)
    per = {k: {"value": sum(v) / len(v), "stderr": stderr(v), "n": len(v)} for k, v in sorted(by_subject.items())}
    macro_se = math.sqrt(sum(p["stderr"] ** 2 for p in per.values() if not math.isnan(p["stderr"]))) / len(per)
    return {
        "acc": {"value": sum(correct) / len(correct), "stderr": stderr(correct), "n": len(correct)},
        "acc_macro": {"value": sum(p["value"] for p in per.values()) / len(per), "stderr": macro_se, "n": len(per)},
        "per_subject": per,
        "questions": questions,
    }
