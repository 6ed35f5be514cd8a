"""Supervised fine-tuning data in TRL's layouts -> token items with a loss mask, packed like pretraining.

JSONL lines, one example each:
- ``{"prompt": str, "completion": str}``: the loss covers the completion and the end-of-document token
  that follows it (TRL's ``completion_only_loss``);
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the chat template
  (``data/chat.py``); the loss covers the assistant's turns (TRL's ``assistant_only_loss``);
- ``{"prompt": [messages], "completion": [messages]}`` (TRL's conversational prompt-completion):
  the loss covers the completion's assistant turns.

A malformed line is counted and reported as ``file:line: why``; the run fails only when their share
exceeds ``sft.max_bad_fraction``. An example longer than ``train.seq_len + 1`` tokens is cut at the end
(counted); one with no trained token left is dropped (counted).

Each example is one item ``{"inputs", "targets", "loss_mask"}`` (targets that are trained = 1);
``make_sft_dataset`` packs items first-fit into rows of ``seq_len`` with segment ids, as pretraining
does, so a batch is ``inputs``, ``targets``, ``loss_mask``, ``positions``, ``segment_ids`` [B,T].

The embedded demo (no file given) is instruction following on the stdlib corpus: the prompt names a
function, its signature and the first line of its docstring; the completion is the function's
source. Held-out examples come from the held-out files only.
"""

from __future__ import annotations

import ast
import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from open_r1_jax.config import DataConfig
from open_r1_jax.data.chat import ROLES, ChatTemplate
from open_r1_jax.data.jsonl import read_jsonl

DEMO_PROMPT = "### Instruction:\nWrite the Python function `{name}{args}`: {summary}\n### Response:\n"


class InstructDataError(ValueError):
    """Too many malformed lines, or no usable example."""


@dataclass
class Example:
    segments: list[tuple[str, bool]]  # (text, trained?) in order
    eos: bool  # append the end-of-document token, trained (prompt-completion text)
    where: str = ""

    @property
    def prompt(self) -> str:
        """The text before the first trained piece (what generation starts from)."""
        out = ""
        for text, trained in self.segments:
            if trained:
                break
            out += text
        return out

    @property
    def completion(self) -> str:
        return "".join(t for t, trained in self.segments if trained)


def skipped_lines(bad: list[str]) -> str:
    """The part of a data report's summary that counts its malformed lines (and names the first)."""
    return f", {len(bad)} malformed lines skipped (first: {bad[0]})" if bad else ""


@dataclass
class InstructReport:
    examples: int = 0
    bad: list[str] = field(default_factory=list)
    truncated: int = 0
    empty: int = 0  # nothing trained left after truncation: dropped
    trained_tokens: int = 0
    media: dict[str, int] = field(default_factory=dict)  # media files read and what was done to them

    def summary(self) -> str:
        s = f"{self.examples} examples, {self.trained_tokens} trained tokens" + skipped_lines(self.bad)
        s += f", {self.truncated} truncated, {self.empty} dropped with no trained token left"
        return s + "".join(f", {n} {event}" for event, n in sorted(self.media.items()))


def messages_ok(msgs) -> bool:
    return (
        isinstance(msgs, list)
        and bool(msgs)
        and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs)
    )


def parse_example(rec, template: ChatTemplate, where: str) -> Example | str:
    """One JSON record -> Example, or the reason it is malformed."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if "messages" in rec:
        msgs = rec["messages"]
        if not messages_ok(msgs):
            return f"messages must be a non-empty list of {{role in {list(ROLES)}, content: str}}"
        if not any(m["role"] == "assistant" for m in msgs):
            return "messages has no assistant turn to train on"
        return Example(template.segments(msgs), eos=False, where=where)
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return Example([(prompt, False), (completion, True)], eos=True, where=where)
    if messages_ok(prompt) and messages_ok(completion):
        return Example(template.segments(prompt + completion, trained_from=len(prompt)), eos=False, where=where)
    return "needs string fields 'prompt' and 'completion', or 'messages' (a list of {role, content})"


def read_examples(path: str | Path, template: ChatTemplate, max_bad_fraction: float, report: InstructReport):
    """Examples of a JSONL file; malformed lines are counted in ``report.bad`` (``data/jsonl.py``)."""
    parse = lambda rec, where: parse_example(rec, template, where)
    return read_jsonl(
        path,
        parse,
        report.bad,
        what="sft: data file",
        error=InstructDataError,
        max_bad_fraction=max_bad_fraction,
        setting="sft.max_bad_fraction",
    )


def _functions(text: str, max_chars: int):
    """(name, args, summary, source) of the documented functions of a module, shortest first."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
            continue
        doc = ast.get_docstring(node)
        if not doc or not doc.strip():
            continue
        source = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])) + "\n"
        if len(source) > max_chars or not source.startswith("def "):
            continue
        args = "(" + ast.unparse(node.args) + ")"
        out.append((node.name, args, doc.strip().splitlines()[0].strip(), source))
    return out


def demo_examples(heldout: bool, n: int, seed: int, max_len: int, max_corpus_mb: float = 0.0) -> list[Example]:
    """Deterministic instruction-following examples from the stdlib corpus (see the module docstring):
    at most ``n``, each within ``max_len`` bytes; held-out ones from the held-out files only."""
    from open_r1_jax.data.sources import load_documents

    train, held, _ = load_documents(DataConfig(max_corpus_mb=max_corpus_mb))
    found = []
    for doc in held if heldout else train:
        for name, args, summary, source in _functions(doc.text, max_len):
            prompt = DEMO_PROMPT.format(name=name, args=args, summary=summary)
            if len((prompt + source).encode()) < max_len:
                found.append(Example([(prompt, False), (source, True)], eos=True, where=f"{doc.name}:{name}"))
    random.Random(seed + int(heldout)).shuffle(found)
    return found[:n]


def encode_examples(examples: list[Example], tokenizer, seq_len: int, report: InstructReport) -> list[dict]:
    """Examples -> items ``{"inputs", "targets", "loss_mask"}`` of at most ``seq_len`` positions."""
    items = []
    for ex in examples:
        ids, trained = [], []
        for text, is_trained in ex.segments:
            piece = tokenizer.encode(text)
            ids.append(piece)
            trained.append(np.full(len(piece), is_trained))
        if ex.eos:
            ids.append(np.asarray([tokenizer.eos_id]))
            trained.append(np.ones(1, bool))
        tok, lab = np.concatenate(ids).astype(np.int32), np.concatenate(trained)
        if len(tok) > seq_len + 1:
            tok, lab = tok[: seq_len + 1], lab[: seq_len + 1]
            report.truncated += 1
        mask = lab[1:].astype(np.int32)  # target j is token j+1
        if len(tok) < 2 or not mask.any():
            report.empty += 1
            continue
        items.append({"inputs": tok[:-1], "targets": tok[1:], "loss_mask": mask})
        report.trained_tokens += int(mask.sum())
    report.examples += len(items)
    return items


class ItemSource:
    """Random access over a list of items (a grain source; picklable)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
