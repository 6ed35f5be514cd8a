"""``aqa``: questions about audio clips, greedy normalised exact match beside the blind baseline
(``eval/media_qa.py``).

Questions: ``aqa.n`` per question type about held-out clips of the multimodal demo
(``data/synthetic/tones.py``: pitch, count, contour, length; their attribute combinations never
trained), or ``aqa.file``: JSONL of ``{"audio": path, "question", "answer"}`` (or ``"transcript"``;
paths relative to the file), as the SFT stage reads it.
"""

from __future__ import annotations

from open_r1_jax.eval import media_qa


def demo_examples(model, n: int, seed: int) -> list:
    from open_r1_jax.data.multimodal import demo_seconds, qa_example
    from open_r1_jax.data.synthetic import tones

    a, seconds, found = model.config.audio, demo_seconds(model.config), []
    for qtype in tones.QUESTIONS:
        for i in range(n):
            ex = tones.example(seed, i, True, a.sample_rate, qtype, seconds)
            found.append(qa_example(ex["question"], ex["answer"], f"tones:heldout:{qtype}:{i}", audio=ex["audio"],
                                    qtype=qtype))  # fmt: skip
    return found


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    demo = lambda: demo_examples(model, cfg.n, seed)
    target = {"pitch, count": ">= 0.80 (demo)"}
    return media_qa.run(model, cfg, "audio", demo, "held-out clips of data/synthetic/tones.py", target, progress)
