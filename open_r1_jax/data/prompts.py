"""Prompts with reference answers for GRPO: JSONL files, or the embedded arithmetic demo.

One line each: ``{"prompt": str, "answer": str | number}`` or ``{"messages": [{"role", "content"},
...], "answer": ...}`` (rendered with the chat template and its generation prompt, as the SFT stage
trained it). A malformed line is counted and reported as ``file:line: why``, never silently dropped;
a prompt too long for ``train.seq_len - grpo.max_new_tokens`` tokens is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from open_r1_jax.data import arith
from open_r1_jax.data.chat import ChatTemplate
from open_r1_jax.data.instruct import InstructDataError, messages_ok, skipped_lines
from open_r1_jax.data.jsonl import read_jsonl


@dataclass
class Prompt:
    text: str
    answer: str
    ids: np.ndarray  # token ids of text


@dataclass
class PromptReport:
    prompts: int = 0
    bad: list[str] = field(default_factory=list)
    too_long: int = 0

    def summary(self) -> str:
        too_long = f", {self.too_long} dropped as longer than the prompt budget"
        return f"{self.prompts} prompts" + skipped_lines(self.bad) + too_long


def read_prompts(path: str | Path, template: ChatTemplate, report: PromptReport) -> list[tuple[str, str]]:
    """(prompt, answer) of each usable line; malformed lines are counted in ``report.bad``."""

    def parse(rec, where: str) -> tuple[str, str] | str:
        answer = rec.get("answer") if isinstance(rec, dict) else None
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            return "needs an 'answer' (string or number)"
        if isinstance(rec.get("prompt"), str):
            return rec["prompt"], str(answer)
        if messages_ok(rec.get("messages")):
            return template.render(rec["messages"], add_generation_prompt=True), str(answer)
        return "needs 'prompt' (a string) or 'messages' (a list of {role, content})"

    return read_jsonl(path, parse, report.bad, what="grpo: prompt file", error=InstructDataError)


def load_prompts(path: str, heldout: bool, n_demo: int, seed: int, template, tokenizer, budget: int, report):
    """-> [Prompt] of ``path``, or of the arithmetic demo (``n_demo`` problems of one split) without one."""
    pairs = (
        read_prompts(path, template, report)
        if path
        else [(p["prompt"], p["answer"]) for p in arith.problems(n_demo, seed, heldout)]
    )
    out = []
    for text, answer in pairs:
        ids = np.asarray(tokenizer.encode(text), np.int32)
        if len(ids) == 0 or len(ids) > budget:
            report.too_long += 1
            continue
        out.append(Prompt(text, answer, ids))
    report.prompts = len(out)
    if not out:
        raise InstructDataError(f"grpo prompts: none fits the prompt budget of {budget} tokens ({path or 'demo'})")
    return out
