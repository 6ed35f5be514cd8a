"""Loader of the ``next_line`` lm-eval task: local JSONL files in the MMLU layout, checked line by line."""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parents[1] / "data"


def read_mc(path) -> list[dict]:
    """Rows of a JSONL file; a malformed one raises ValueError naming ``file:line`` and what is expected."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e})") from e
            ok = (
                isinstance(row, dict)
                and isinstance(row.get("question"), str)
                and isinstance(row.get("subject"), str)
                and isinstance(row.get("choices"), list)
                and len(row["choices"]) == 4
                and all(isinstance(c, str) for c in row["choices"])
                and row.get("answer") in (0, 1, 2, 3)
            )
            if not ok:
                raise ValueError(f"{path}:{i}: expected question (str), subject (str), choices (4 str), answer (0-3)")
            rows.append({k: row[k] for k in ("question", "subject", "choices", "answer")})
    return rows


def load(mc_file=None, dev_file=None, **_):
    """-> DatasetDict with "test" (``mc_file``) and "dev" (``dev_file``, the few-shot examples)."""
    test = read_mc(mc_file or DATA / "next_line.jsonl")
    # few-shot examples never come from the test file: without a dev_file, k-shot has nothing to draw from
    dev = dev_file or (DATA / "next_line_dev.jsonl" if mc_file is None else None)
    dev = read_mc(dev) if dev else []
    empty = {"question": [], "subject": [], "choices": [], "answer": []}
    to_set = lambda rows: datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(empty)  # noqa: E731
    return datasets.DatasetDict({"test": to_set(test), "dev": to_set(dev)})
