"""``vqa``: questions about images, greedy normalised exact match beside the blind baseline
(``eval/media_qa.py``).

Questions: ``vqa.n`` per question type about held-out images of the multimodal demo
(``data/synthetic/shapes.py``: colour, shape, count, left, right, bigger, smaller; their attribute
combinations never trained), or ``vqa.file``: JSONL of ``{"image": path, "question", "answer"}`` (or
``"caption"``; paths relative to the file), as the SFT stage reads it.
"""

from __future__ import annotations

from open_r1_jax.eval import media_qa


def examples(model, cfg, seed: int) -> tuple[list, str, list]:
    from open_r1_jax.data.multimodal import qa_example
    from open_r1_jax.data.synthetic import shapes

    if cfg.file:
        found, bad = media_qa.file_examples(cfg.file, "image", model, cfg.max_bad_fraction, cfg.n)
        return found, cfg.file, bad
    size = model.config.vision.image_size
    found = []
    for qtype in shapes.QUESTIONS:
        for i in range(cfg.n):
            ex = shapes.example(seed, i, True, size, qtype)
            found.append(qa_example(ex["question"], ex["answer"], f"shapes:heldout:{qtype}:{i}", image=ex["image"],
                                    qtype=qtype))  # fmt: skip
    return found, "held-out images of data/synthetic/shapes.py", []


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    if not model.config.vision.enabled:
        raise ValueError("vqa: the model has no image adapter (model.vision.enabled is false)")
    found, source, bad = examples(model, cfg, seed)
    res = media_qa.score(model, found, "image", cfg, progress)
    res["target"] = {"colour, shape": ">= 0.90 (demo)", "count": ">= 0.70 (demo)"}
    return {**res, "bad_lines": bad, "config": {"data": source, "n": len(found), "blind": "has_image false"}}
