"""The multimodal demo's picture: held-out images and clips with the model's answers, seen and blind.

Asks a trained run (``configs/multimodal_tiny.yaml``) one question of each type about held-out
synthetic media (``data/synthetic/``, combinations never trained) and draws each image, or the
clip's log-mel spectrogram, with the question, the reference, the model's answer and its blind answer
(the media masked out, as ``eval --tasks vqa,aqa`` computes its baseline). Writes ``--out`` (a PNG)
and prints one JSON line with the answers.

    python benchmarks/multimodal_figure.py --run runs/multimodal_tiny [--out docs/img/multimodal_answers.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/multimodal_tiny")
    p.add_argument("--out", default="docs/img/multimodal_answers.png")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from open_r1_jax.data.multimodal import demo_seconds, qa_example
    from open_r1_jax.data.synthetic import shapes, tones
    from open_r1_jax.eval import media_qa
    from open_r1_jax.eval.config import MediaQAConfig
    from open_r1_jax.eval.model import EvalModel
    from open_r1_jax.model import audio_features

    model = EvalModel(args.run, progress=False)
    cfg, qa = model.config, MediaQAConfig(batch=8)
    images = [shapes.example(args.seed, i, True, cfg.vision.image_size, t) for i, t in enumerate(shapes.QUESTIONS)]
    clips = [tones.example(args.seed, i, True, cfg.audio.sample_rate, t, demo_seconds(cfg)) for i, t in
             enumerate(tones.QUESTIONS)]  # fmt: skip
    panels = []
    for kind, found in (("image", images), ("audio", clips)):
        exs = [qa_example(e["question"], e["answer"], **{kind: e[kind]}) for e in found]
        seen = media_qa.answers(model, exs, kind, False, qa, False)
        blind = media_qa.answers(model, exs, kind, True, qa, False)
        panels += [(kind, e, media_qa.normalise(s), media_qa.normalise(b)) for e, s, b in zip(found, seen, blind)]
    a = cfg.audio
    filters = np.asarray(audio_features.mel_filters(a.sample_rate, a.n_fft, a.n_mels, a.f_min, a.f_max), np.float32)
    fig, axes = plt.subplots(2, 7, figsize=(17, 6.2))
    for ax in axes.flat:
        ax.axis("off")
    for i, (kind, e, seen, blind) in enumerate(panels):
        ax = axes.flat[i]
        if kind == "image":
            ax.imshow(e["image"], interpolation="nearest")
        else:
            mel = audio_features.log_mel(
                np.asarray(e["audio"])[None], np.asarray(filters, np.float32), a.n_fft, a.hop_length, a.log_floor
            )[0]
            ax.imshow(np.asarray(mel).T, origin="lower", aspect="auto", cmap="magma")
        mark = lambda x: "✓" if x == e["answer"] else "✗"
        ax.set_title(f"{e['question']}\nanswer: {e['answer']}\nmodel: {seen} {mark(seen)}   blind: {blind} "
                     f"{mark(blind)}", fontsize=8)  # fmt: skip
    fig.suptitle(f"held-out synthetic media, {args.run} (top: images; bottom: log-mel of the clips)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    rows = [{"kind": k, "question": e["question"], "answer": e["answer"], "model": s, "blind": b}
            for k, e, s, b in panels]  # fmt: skip
    print(json.dumps(rows, indent=1))
    right = sum(r["model"] == r["answer"] for r in rows)
    emit("multimodal_figure", {"out": args.out, "correct": right, "n": len(rows),
                               "blind_correct": sum(r["blind"] == r["answer"] for r in rows)})  # fmt: skip


if __name__ == "__main__":
    main()
