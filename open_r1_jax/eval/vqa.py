"""``vqa``: questions about images, greedy normalised exact match beside the blind baseline
(``eval/media_qa.py``).

Questions: ``vqa.n`` per question type about held-out images of the multimodal demo
(``data/synthetic/shapes.py``: colour, shape, count, left, right, bigger, smaller; their attribute
combinations never trained), or ``vqa.file``: JSONL of ``{"image": path, "question", "answer"}`` (or
``"caption"``; paths relative to the file), as the SFT stage reads it.
"""

from __future__ import annotations

from open_r1_jax.eval import media_qa


def demo_examples(model, n: int, seed: int) -> list:
    from open_r1_jax.data.multimodal import qa_example
    from open_r1_jax.data.synthetic import shapes

    size, found = model.config.vision.image_size, []
    for qtype in shapes.QUESTIONS:
        for i in range(n):
            ex = shapes.example(seed, i, True, size, qtype)
            found.append(qa_example(ex["question"], ex["answer"], f"shapes:heldout:{qtype}:{i}", image=ex["image"],
                                    qtype=qtype))  # fmt: skip
    return found


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    demo = lambda: demo_examples(model, cfg.n, seed)
    target = {"colour, shape": ">= 0.90 (demo)", "count": ">= 0.70 (demo)"}
    return media_qa.run(model, cfg, "image", demo, "held-out images of data/synthetic/shapes.py", target, progress)
