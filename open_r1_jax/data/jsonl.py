"""The one JSONL read loop of the fine-tuning data (SFT examples, DPO pairs, GRPO prompts, media Q/A).

One JSON value per line; blank lines are skipped. A line that is not UTF-8, not JSON, or that the
caller's ``parse`` refuses is counted in ``bad`` as ``file:line: why``, never dropped silently; the
read fails (``error``, naming the count, the setting and the first bad line) only when bad lines pass
``max_bad_fraction`` of the file's lines, or when nothing usable is left.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_jsonl(
    path: str | Path,
    parse: Callable[[Any, str], Any],
    bad: list[str],
    *,
    what: str,
    error: type[Exception],
    max_bad_fraction: float = 1.0,
    setting: str = "",
    bad_means: str = "malformed",
) -> list:
    """-> ``parse(record, where)`` of every good line, in file order. ``parse`` returns the item, or a
    string saying why the record is refused. ``what`` names the file's kind in errors ("sft: data
    file"), ``setting`` the key that holds ``max_bad_fraction``; ``bad`` receives this file's bad lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    items, lines, before = [], 0, len(bad)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            lines += 1
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                bad.append(f"{where}: not valid JSON ({type(e).__name__})")
                continue
            got = parse(record, where)
            if isinstance(got, str):
                bad.append(f"{where}: {got}")
            else:
                items.append(got)
    mine = bad[before:]
    if lines and len(mine) > max_bad_fraction * lines:
        raise error(
            f"{path}: {len(mine)} of {lines} lines are {bad_means} (more than {setting} = {max_bad_fraction}); "
            f"first: {mine[0]}"
        )
    if not items:
        first = f"; first: {mine[0]}" if mine else ""
        raise error(f"{path}: no usable line ({len(mine)} of {lines} lines are {bad_means}{first})")
    return items
