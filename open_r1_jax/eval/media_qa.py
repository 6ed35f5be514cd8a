"""What ``vqa`` and ``aqa`` share: questions about images or clips, answered greedily, scored by
normalised exact match beside a blind baseline.

Each question is asked twice of the same model: with its media, and **blind**, with the media masked
out (``has_image`` / ``has_audio`` False: the adapter's prefix slots become padding, so the answer can
come only from the question's text; the media arrays themselves are left as they are, which the mask
makes irrelevant). The gap between the two is how much of the answer comes from the input.

Normalisation (VQA / SQuAD style): the first line of the generation and the reference, lowercased,
punctuation removed, articles (a, an, the) dropped, number words up to ten written as digits,
whitespace collapsed. Figures, each a mean over questions with its stderr: ``accuracy`` and
``blind_accuracy`` overall, and per question type ``<type>`` and ``blind_<type>``.
"""

from __future__ import annotations

import re
import string

import numpy as np
from tqdm import tqdm

from open_r1_jax.eval.mc import mean_stderr

NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> str:
    line = text.strip().split("\n", 1)[0].lower()
    line = line.translate(str.maketrans("", "", string.punctuation))
    words = [NUMBER_WORDS.get(w, w) for w in line.split() if w not in ARTICLES]
    return re.sub(r"\s+", " ", " ".join(words)).strip()


def _media_arrays(chunk, kind: str, cfg, blind: bool) -> dict:
    """The examples' images or clips as one batch of the generator's keyword arguments."""
    if kind == "image":
        r, c = cfg.vision.image_size, cfg.vision.channels
        images = np.stack([ex.image if ex.image is not None else np.zeros((r, r, c), np.uint8) for ex in chunk])
        has = np.array([ex.image is not None and not blind for ex in chunk])
        return {"images": images, "has_image": has}
    audio = np.zeros((len(chunk), cfg.audio.max_samples), np.float32)
    for i, ex in enumerate(chunk):
        if ex.audio is not None:
            audio[i, : len(ex.audio[: cfg.audio.max_samples])] = ex.audio[: cfg.audio.max_samples]
    return {"audio": audio, "has_audio": np.array([ex.audio is not None and not blind for ex in chunk])}


def answers(model, examples: list, kind: str, blind: bool, cfg, progress: bool = True) -> list[str]:
    """Greedy answers to ``examples`` (``MediaExample``) with their ``kind`` media ("image" / "audio")."""
    from open_r1_jax.generate import Generator

    tok = model.tokenizer
    gen = Generator(model.config, model.pre.params, model.pre.model_state)
    out: list[str] = []
    bar = tqdm(total=len(examples), desc=f"{kind} q/a{' (blind)' if blind else ''}", disable=not progress, leave=False)
    for s in range(0, len(examples), cfg.batch):
        chunk = examples[s : s + cfg.batch]
        real = len(chunk)
        chunk = chunk + [chunk[0]] * (cfg.batch - real)  # full batches: one compilation
        ids = [tok.encode(ex.prompt).tolist() for ex in chunk]
        media = _media_arrays(chunk, kind, model.config, blind)
        got = gen.generate(ids, cfg.max_new_tokens, stop_ids=(tok.eos_id,), **media)
        out += [tok.decode(t) for t in got.tokens[:real]]
        bar.update(real)
    bar.close()
    return out


def score(model, examples: list, kind: str, cfg, progress: bool = True) -> dict:
    """-> metrics (overall and per question type, with and without the media) and sample rows."""
    if not examples:
        raise ValueError(f"{kind} q/a: no question to ask")
    seen = answers(model, examples, kind, False, cfg, progress)
    blind = answers(model, examples, kind, True, cfg, progress)
    rows = []
    for ex, a, b in zip(examples, seen, blind):
        ref = normalise(ex.completion.split("\n")[0])
        rows.append({"where": ex.where, "qtype": ex.qtype or "all", "question": ex.prompt, "answer": ex.completion,
                     "generated": a, "blind": b, "correct": normalise(a) == ref,
                     "blind_correct": normalise(b) == ref})  # fmt: skip
    metrics = {"accuracy": mean_stderr([float(r["correct"]) for r in rows]),
               "blind_accuracy": mean_stderr([float(r["blind_correct"]) for r in rows])}  # fmt: skip
    for qtype in dict.fromkeys(r["qtype"] for r in rows):
        of = [r for r in rows if r["qtype"] == qtype]
        metrics[qtype] = mean_stderr([float(r["correct"]) for r in of])
        metrics[f"blind_{qtype}"] = mean_stderr([float(r["blind_correct"]) for r in of])
    return {"metrics": metrics, "samples": rows[:50]}


def file_examples(path: str, kind: str, model, max_bad_fraction: float, n: int):
    """The ``kind`` examples of a JSONL file (``data/media_files.py`` layouts) -> (examples, bad lines)."""
    from open_r1_jax.data import media_files
    from open_r1_jax.data.chat import ChatTemplate
    from open_r1_jax.data.instruct import InstructReport

    report = InstructReport()
    found = media_files.read_examples(path, ChatTemplate(), max_bad_fraction, report, model.config)
    found = [ex for ex in found if getattr(ex, kind) is not None]
    return (found[:n] if n else found), report.bad


def run(model, cfg, kind: str, demo, source: str, target: dict, progress: bool = True) -> dict:
    """A task's result: ``cfg.file``'s questions, else ``demo()`` (held-out demo examples, described by
    ``source``), answered with and without their ``kind`` media; ``target`` is the demo's."""
    task, section = ("vqa", "vision") if kind == "image" else ("aqa", "audio")
    if not getattr(model.config, section).enabled:
        raise ValueError(f"{task}: the model has no {kind} adapter (model.{section}.enabled is false)")
    if cfg.file:
        (found, bad), source = file_examples(cfg.file, kind, model, cfg.max_bad_fraction, cfg.n), cfg.file
    else:
        found, bad = demo(), []
    res = score(model, found, kind, cfg, progress)
    config = {"data": source, "n": len(found), "blind": f"has_{kind} false"}
    return {**res, "target": target, "bad_lines": bad, "config": config}
