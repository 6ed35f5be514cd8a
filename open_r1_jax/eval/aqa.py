"""``aqa``: questions about audio clips, greedy normalised exact match beside the blind baseline
(``eval/media_qa.py``).

Questions: ``aqa.n`` per question type about held-out clips of the multimodal demo
(``data/synthetic/tones.py``: pitch, count, contour, length; their attribute combinations never
trained), or ``aqa.file``: JSONL of ``{"audio": path, "question", "answer"}`` (or ``"transcript"``;
paths relative to the file), as the SFT stage reads it.
"""

from __future__ import annotations

from open_r1_jax.eval import media_qa


def examples(model, cfg, seed: int) -> tuple[list, str, list]:
    from open_r1_jax.data.multimodal import demo_seconds, qa_example
    from open_r1_jax.data.synthetic import tones

    if cfg.file:
        found, bad = media_qa.file_examples(cfg.file, "audio", model, cfg.max_bad_fraction, cfg.n)
        return found, cfg.file, bad
    a, seconds = model.config.audio, demo_seconds(model.config)
    found = []
    for qtype in tones.QUESTIONS:
        for i in range(cfg.n):
            ex = tones.example(seed, i, True, a.sample_rate, qtype, seconds)
            found.append(qa_example(ex["question"], ex["answer"], f"tones:heldout:{qtype}:{i}", audio=ex["audio"],
                                    qtype=qtype))  # fmt: skip
    return found, "held-out clips of data/synthetic/tones.py", []


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    if not model.config.audio.enabled:
        raise ValueError("aqa: the model has no audio adapter (model.audio.enabled is false)")
    found, source, bad = examples(model, cfg, seed)
    res = media_qa.score(model, found, "audio", cfg, progress)
    res["target"] = {"pitch, count": ">= 0.80 (demo)"}
    return {**res, "bad_lines": bad, "config": {"data": source, "n": len(found), "blind": "has_audio false"}}
