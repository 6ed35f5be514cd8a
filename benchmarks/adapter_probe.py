"""Can an adapter's front end see what the multimodal demo asks? A probe, not the demo.

Each adapter (``model/multimodal.py``, the demo's sizes) with its tokens mean-pooled into linear
heads, one per attribute, trained with cross-entropy on the synthetic training split and scored on
the held-out split, whose attribute combinations are never trained (``data/synthetic/``):

    image  VisionAdapter -> heads for colour (6), shape (4), count (4) of the count scenes
    audio  AudioAdapter  -> heads for pitch (2), count (4), contour (3), length (2)

once per front end, side by side in one run: RGB patches against ``model.vision.chroma_blocks``
(brightness at full resolution + block means of chroma), raw log-mel against
``model.audio.frame_energy`` (the spectrum's shape + the frame's log energy). The language model is
left out, so this measures only whether the front end lets a shape or a count learned with some
colours (pitches) carry to the others. Accuracy near 0 on a held-out attribute, below chance, is
the sign that it does not: the adapter recognises the trained combination nearest to what it sees.

    python benchmarks/adapter_probe.py [--steps 800] [--batch 32] [--only image|audio]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

from open_r1_jax.config import load_config, replace  # noqa: E402
from open_r1_jax.data.synthetic import shapes, tones  # noqa: E402
from open_r1_jax.model.multimodal import AudioAdapter, VisionAdapter  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multimodal_tiny.yaml"
# attribute -> (classes, label of a scene / clip)
IMAGE_HEADS = {
    "colour": (list(shapes.COLOURS), lambda s: s.shapes[0].colour),
    "shape": (list(shapes.SHAPES), lambda s: s.shapes[0].kind),
    "count": ([1, 2, 3, 4], lambda s: len(s.shapes)),
}
AUDIO_HEADS = {
    "pitch": (list(tones.REGISTERS), lambda c: c.pitch),
    "count": ([1, 2, 3, 4], lambda c: len(c.onsets)),
    "contour": (list(tones.CONTOURS), lambda c: c.contour),
    "length": (list(tones.LENGTHS), lambda c: c.length),
}


def image_batch(start: int, n: int, heldout: bool, size: int):
    scenes = [shapes.sample_scene(shapes.rng_for(0, i, heldout), "count", heldout) for i in range(start, start + n)]
    labels = [[classes.index(label(s)) for classes, label in IMAGE_HEADS.values()] for s in scenes]
    return np.stack([shapes.draw(s, size) for s in scenes]), np.array(labels)


def audio_batch(start: int, n: int, heldout: bool, sample_rate: int):
    clips, waves = [], []
    for i in range(start, start + n):
        rng = tones.rng_for(0, i, heldout)
        clips.append(tones.sample_clip(rng, heldout))
        waves.append(tones.synthesize(clips[-1], sample_rate, 1.0, rng))
    labels = [[classes.index(label(c)) for classes, label in AUDIO_HEADS.values()] for c in clips]
    return np.stack(waves), np.array(labels)


class Probe(nnx.Module):
    """adapter -> mean over its tokens -> one linear head per attribute (logits side by side)."""

    def __init__(self, adapter, d_model: int, n_classes: list[int], rngs: nnx.Rngs):
        self.adapter = adapter
        self.heads = nnx.Linear(d_model, sum(n_classes), rngs=rngs)
        self.edges = tuple(int(e) for e in np.cumsum([0, *n_classes]))  # static: slices under jit

    def __call__(self, media):
        logits = self.heads(self.adapter(media).mean(axis=1))
        return [logits[:, a:b] for a, b in zip(self.edges[:-1], self.edges[1:])]


def probe(kind: str, cfg, steps: int, batch: int, evals: int) -> list[dict]:
    m = cfg.model
    if kind == "image":
        adapter = VisionAdapter(m.vision, m.d_model, m.norm_eps, 0.02, jnp.float32, nnx.Rngs(0))
        heads, draw = IMAGE_HEADS, lambda s, n, h: image_batch(s, n, h, m.vision.image_size)
    else:
        adapter = AudioAdapter(m.audio, m.d_model, m.norm_eps, 0.02, jnp.float32, nnx.Rngs(0))
        heads, draw = AUDIO_HEADS, lambda s, n, h: audio_batch(s, n, h, m.audio.sample_rate)
    model = Probe(adapter, m.d_model, [len(c) for c, _ in heads.values()], nnx.Rngs(1))
    lr = optax.warmup_cosine_decay_schedule(0.0, 1e-3, max(steps // 20, 1), steps, 1e-5)  # as the Trainer
    opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr)), wrt=nnx.Param)

    def loss_fn(model, x, y):
        return sum(optax.softmax_cross_entropy_with_integer_labels(lg, y[:, i]).mean() for i, lg in enumerate(model(x)))

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, x):
        return jnp.stack([lg.argmax(-1) for lg in model(x)], axis=1)

    x_eval, y_eval = draw(0, evals, True)
    rows, t0 = [], time.perf_counter()
    for i in range(steps):
        x, y = draw(i * batch, batch, False)
        loss = step(model, opt, jnp.asarray(x), jnp.asarray(y))
        if (i + 1) % max(steps // 4, 1) == 0:
            acc = np.asarray(predict(model, jnp.asarray(x_eval)) == y_eval).mean(0)
            rows.append({"step": i + 1, "loss": float(loss), **{h: float(a) for h, a in zip(heads, acc)}})
            scores = "  ".join(f"{h} {a:.2f}" for h, a in zip(heads, acc))
            print(f"    step {i + 1:>5} loss {float(loss):.3f}  held-out {scores}  ({time.perf_counter() - t0:.0f} s)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--evals", type=int, default=300, help="held-out examples scored")
    ap.add_argument("--only", choices=["image", "audio"], default=None)
    args = ap.parse_args()
    base = load_config(str(CONFIG))
    variants = {
        "image": {"RGB patches": 0, "chroma_blocks 2": 2},
        "audio": {"log-mel": False, "frame_energy": True},
    }
    key = {"image": "model.vision.chroma_blocks", "audio": "model.audio.frame_energy"}
    figures = {}
    for kind, runs in variants.items():
        if args.only and kind != args.only:
            continue
        for name, value in runs.items():
            print(f"{kind}: {name} ({args.steps} steps of {args.batch}; {args.evals} held-out examples)")
            cfg = replace(base, **{key[kind]: value})
            figures[f"{kind}: {name}"] = probe(kind, cfg, args.steps, args.batch, args.evals)
    print("\nheld-out accuracy after the last step (chance: 1/classes)")
    for name, rows in figures.items():
        print(f"  {name:<26} " + "  ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k not in ("step", "loss")))
    emit("adapter_probe", {"steps": args.steps, "batch": args.batch, "runs": figures})


if __name__ == "__main__":
    main()
