"""Synthetic arithmetic for the GRPO demo: 2- and 3-digit addition and subtraction with worked answers.

A problem ``a op b`` (10 <= a, b <= 999, op + or -, a >= b for subtraction) is held out when
crc32 of its text is 0 mod ``HELDOUT_MOD``: train and held-out problems never overlap, for any seed.
Prompt and completion (the R1 format: reasoning in ``<think>``, the result in ``<answer>``):

    prompt:     "Q: 347+085\nA: "
    completion: "<think>7+5+0=12;4+8+1=13;3+0+1=04</think><answer>0432</answer>"

The worked answer goes column by column from the units: top digit + bottom digit + carry = sum
(subtraction: top digit (+10 when it borrows) - bottom digit - borrow = digit). Every field has a
fixed width (operands of 3 digits, 2-digit column results, a 4-digit answer, which the accuracy
reward compares as a number), so each character depends on characters at fixed distances: a small
model can learn the procedure, and a short cold start learns it only partly, which leaves
reinforcement learning something to fix.
"""

from __future__ import annotations

import random
import zlib

HELDOUT_MOD = 10
HELDOUT_SEED = 7919  # the one stream the held-out problems are drawn from, whatever the run's seed
PROMPT = "Q: {a:03d}{op}{b:03d}\nA: "  # operands zero-padded: column i is at a fixed offset


def is_heldout(a: int, op: str, b: int) -> bool:
    return zlib.crc32(f"{a}{op}{b}".encode()) % HELDOUT_MOD == 0


def value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def worked(a: int, op: str, b: int) -> str:
    """The ``<think>`` columns of ``a op b`` (see the module docstring)."""
    da, db = f"{a:03d}"[::-1], f"{b:03d}"[::-1]
    cols, carry = [], 0
    for i in range(3):
        x, y = int(da[i]), int(db[i])
        if op == "+":
            s = x + y + carry
            cols.append(f"{x}+{y}+{carry}={s:02d}")
            carry = s // 10
        else:
            borrow = 1 if x - y - carry < 0 else 0
            top = x + 10 * borrow
            cols.append(f"{top:02d}-{y}-{carry}={top - y - carry:02d}")
            carry = borrow
    return ";".join(cols)


def completion(a: int, op: str, b: int) -> str:
    return f"<think>{worked(a, op, b)}</think><answer>{value(a, op, b):04d}</answer>"


def problems(n: int, seed: int, heldout: bool) -> list[dict]:
    """``n`` distinct problems of one split: ``{"prompt", "completion", "answer"}`` (answer: a string).
    ``seed`` draws the training problems; the held-out ones are the first ``n`` of one fixed list, so
    runs of any seed and the evaluator's ``arith`` task score the same problems."""
    rng, out, seen = random.Random(HELDOUT_SEED if heldout else seed), [], set()
    while len(out) < n:
        a = rng.randint(10, 999)
        b = rng.randint(10, 999) if rng.random() < 0.5 else rng.randint(10, 99)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if is_heldout(a, op, b) != heldout or (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        out.append({"prompt": PROMPT.format(a=a, op=op, b=b), "completion": completion(a, op, b),
                    "answer": str(value(a, op, b))})  # fmt: skip
    return out


def sft_examples(heldout: bool, n: int, seed: int, max_len: int = 0):
    """The cold start's worked examples as SFT items (``sft.demo: arith``; every one is < 100 bytes)."""
    from open_r1_jax.data.instruct import Example

    return [
        Example([(p["prompt"], False), (p["completion"], True)], eos=True, where=f"arith:{p['prompt'].strip()}")
        for p in problems(n, seed, heldout)
    ]
