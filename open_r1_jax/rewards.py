"""Rule-based rewards for GRPO (``grpo.rewards``), as plain Python functions in TRL's calling convention.

A reward function takes ``prompts`` and ``completions`` (lists of str, one per completion) and keyword
arguments (``answer``: the reference per completion; ``completion_lengths``: tokens per completion;
``max_new_tokens``; unknown ones must be accepted with ``**kwargs``) and returns one float per
completion. Built in (``REWARDS``):

- ``accuracy``: 1 when the text inside the first ``<answer>...</answer>`` equals the reference, numbers
  compared as numbers (``"12.0"`` == ``"12"``), other text after stripping spaces; else 0.
- ``format``: 1 when the whole completion is ``<think>...</think><answer>...</answer>`` (spaces
  around allowed), else 0.
- ``digits``: partial credit, the share of characters of the answer that match the reference when
  both are aligned on the right (units under units; ``"0432"`` against ``"0482"`` scores 0.75), over
  the longer of the two; 0 without an answer. A denser signal than ``accuracy`` for fixed-width
  numeric answers, where a group whose samples are all wrong still ranks its near misses.
- ``length``: DAPO's soft overlong penalty: 0 up to ``max_new_tokens - buffer`` tokens (``buffer`` =
  a quarter of ``max_new_tokens``), then falling linearly to -1 at ``max_new_tokens``.

Process rewards (``grpo.process_reward``, DeepSeekMath's process supervision) score each *step* of a
completion: the same arguments, and per completion a list of ``(end, reward)`` pairs, ``end`` the
character offset just after the step, in order. Built in (``PROCESS_REWARDS``):

- ``arith_steps``: the embedded arithmetic's worked columns (``data/arith.py``): each ``;``-separated
  column inside ``<think>`` scores 1 when it equals the reference's column (carry and result included),
  else 0; the last step, ending after ``</answer>`` (or the text), scores ``accuracy``.

Your own: ``grpo.reward_file: my_rewards.py`` and ``grpo.rewards: [accuracy, my_fn]``; names are looked
up in the file first, then here. ``score`` calls them: a function that raises is retried one
completion at a time, and each completion it still fails on scores 0 and is counted (never stops a run).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from open_r1_jax.config import ConfigError
from open_r1_jax.data import arith

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def extract_answer(text: str) -> str | None:
    m = ANSWER.search(text)
    return m.group(1).strip() if m else None


def same_answer(got: str | None, ref: str) -> bool:
    if got is None:
        return False
    try:
        a, b = float(got.replace(",", "")), float(ref.replace(",", ""))
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    except ValueError:
        return got.strip() == ref.strip()


def accuracy(prompts, completions, answer, **kwargs) -> list[float]:
    return [float(same_answer(extract_answer(c), a)) for c, a in zip(completions, answer, strict=True)]


def format_reward(prompts, completions, **kwargs) -> list[float]:
    return [float(FORMAT.fullmatch(c) is not None) for c in completions]


def digits(prompts, completions, answer, **kwargs) -> list[float]:
    out = []
    for c, ref in zip(completions, answer, strict=True):
        got, ref = extract_answer(c), str(ref).strip()
        if not got or not ref:
            out.append(0.0)
            continue
        width = max(len(got), len(ref))
        out.append(sum(a == b for a, b in zip(got.rjust(width), ref.rjust(width))) / width)
    return out


def length(prompts, completions, completion_lengths, max_new_tokens, **kwargs) -> list[float]:
    buffer = max(max_new_tokens // 4, 1)
    return [min(0.0, (max_new_tokens - buffer - n) / buffer) for n in completion_lengths]


REWARDS: dict[str, Callable] = {"accuracy": accuracy, "format": format_reward, "digits": digits, "length": length}

ARITH_PROBLEM = re.compile(r"Q: (\d+)([+-])(\d+)")


def arith_steps(prompts, completions, answer, **kwargs) -> list[list[tuple[int, float]]]:
    """Per completion: each worked column (1 when it equals the reference's), then the answer (accuracy)."""
    out = []
    for prompt, text, ref in zip(prompts, completions, answer, strict=True):
        m = ARITH_PROBLEM.search(prompt)
        if m is None:
            raise ValueError(f"arith_steps: prompt {prompt[:40]!r} is not an arithmetic problem ('Q: 347+085')")
        cols = arith.worked(int(m.group(1)), m.group(2), int(m.group(3))).split(";")
        steps, start = [], text.find("<think>")
        if start >= 0:
            start += len("<think>")
            stop = text.find("</think>", start)
            for i, column in enumerate(text[start : stop if stop >= 0 else len(text)].split(";")):
                start += len(column)
                steps.append((start, float(i < len(cols) and column == cols[i])))
                start += 1  # the ";"
        end = ANSWER.search(text)
        steps.append((end.end() if end else len(text), float(same_answer(extract_answer(text), ref))))
        out.append(steps)
    return out


PROCESS_REWARDS: dict[str, Callable] = {"arith_steps": arith_steps}


def _user_functions(reward_file: str) -> dict[str, Callable]:
    if not reward_file:
        return {}
    path = Path(reward_file)
    if not path.is_file():
        raise ConfigError(f"grpo.reward_file: {path} not found")
    spec = importlib.util.spec_from_file_location(f"grpo_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items() if callable(v) and not k.startswith("_")}


def load_rewards(names: tuple[str, ...], weights: tuple[float, ...], reward_file: str) -> list[tuple]:
    """-> [(name, function, weight)] for ``grpo.rewards`` / ``reward_weights`` / ``reward_file``."""
    if not names:
        raise ConfigError("grpo.rewards: name at least one reward function, e.g. [accuracy, format]")
    if weights and len(weights) != len(names):
        raise ConfigError(f"grpo.reward_weights: {len(weights)} weights for {len(names)} grpo.rewards")
    user = _user_functions(reward_file)
    out = []
    for i, name in enumerate(names):
        fn = user.get(name) or REWARDS.get(name)
        if fn is None:
            where = f" or in {reward_file}" if reward_file else ""
            raise ConfigError(
                f"grpo.rewards[{i}]: unknown reward {name!r}; accepted: {', '.join(REWARDS)}{where} "
                "(a function of yours: grpo.reward_file=FILE.py)"
            )
        out.append((name, fn, float(weights[i]) if weights else 1.0))
    return out


def load_process_reward(name: str, reward_file: str) -> Callable | None:
    """-> the function ``grpo.process_reward`` names (the file first, then ``PROCESS_REWARDS``), or None."""
    if not name:
        return None
    fn = _user_functions(reward_file).get(name) or PROCESS_REWARDS.get(name)
    if fn is None:
        where = f" or in {reward_file}" if reward_file else ""
        accepted = ", ".join(PROCESS_REWARDS)
        raise ConfigError(f"grpo.process_reward: unknown process reward {name!r}; accepted: {accepted}{where}")
    return fn


def _steps(values, n: int) -> list[list[tuple[int, float]]]:
    if values is None or len(values) != n:
        raise ValueError(f"returned {None if values is None else len(values)} step lists for {n} completions")
    out = []
    for row in values:
        steps = [(int(e), float(r)) for e, r in row]
        ends = [e for e, _ in steps]
        if ends != sorted(ends) or not all(math.isfinite(r) for _, r in steps):
            raise ValueError(f"steps must be (end, finite reward) pairs in order; got {row!r}")
        out.append(steps)
    return out


def score_steps(fn, prompts: list[str], completions: list[str], **kwargs) -> tuple[list[list], int]:
    """-> (per completion its [(end character, reward)] steps, completions the function failed on: no
    steps, counted)."""
    n = len(completions)
    args = {"prompts": prompts, "completions": completions, **kwargs}
    try:
        return _steps(fn(**args), n), 0
    except Exception:  # noqa: BLE001 - a user's function: isolate the completions it fails on
        out, failures = [], 0
        for i in range(n):
            one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in args.items()}
            try:
                out.append(_steps(fn(**one), 1)[0])
            except Exception:  # noqa: BLE001
                out.append([])
                failures += 1
        return out, failures


def _call(fn, n: int, args: dict) -> list[float]:
    values = fn(**args)
    if values is None or len(values) != n:
        raise ValueError(f"returned {None if values is None else len(values)} values for {n} completions")
    return [float(v) for v in values]


def score(rewards, prompts: list[str], completions: list[str], **kwargs) -> tuple[np.ndarray, dict[str, int]]:
    """-> (rewards [n, len(rewards)] before weighting, failures per function name)."""
    n = len(completions)
    out, failures = np.zeros((n, len(rewards)), np.float32), {}
    for j, (name, fn, _) in enumerate(rewards):
        args = {"prompts": prompts, "completions": completions, **kwargs}
        try:
            out[:, j] = _call(fn, n, args)
        except Exception:  # noqa: BLE001 - a user's function: isolate the completions it fails on
            for i in range(n):
                one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in args.items()}
                try:
                    out[i, j] = _call(fn, 1, one)[0]
                except Exception:  # noqa: BLE001
                    failures[name] = failures.get(name, 0) + 1
        bad = ~np.isfinite(out[:, j])
        if bad.any():  # NaN / inf: scored 0 and counted like a failure
            out[bad, j] = 0.0
            failures[name] = failures.get(name, 0) + int(bad.sum())
    return out, failures
