"""Does a model pretrained on a prepared mixture read the media of its multimodal share?

The held-out media documents of the shards (images or clips with their captions and questions) are
scored three times by the run's model: with their media, with another document's media (the media
rotated by one among the batch's rows of that kind), and blind (``has_image`` / ``has_audio`` false:
the adapter's slots masked, the same text). Loss per text token, by kind. A loss lower with the
document's own media than with another's is information about this image or clip that came through
the adapter (the synthetic documents' text is determined by their scene or clip).

    python -m open_r1_jax.data.prepare --config configs/data/mixture.yaml --out data/mix
    python -m open_r1_jax.train --config configs/tiny.yaml data.kind=arrayrecord data.prepared_dir=data/mix \
        model.vision.enabled=true model.audio.enabled=true run.dir=runs/mix
    PYTHONPATH=. python benchmarks/media_mixture_loss.py --run runs/mix --prepared data/mix
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import load_config
from open_r1_jax.data.mixture import open_prepared
from open_r1_jax.data.pipeline import PipelineSpec, make_dataset, pad_rows
from open_r1_jax.model.multimodal import media_kwargs
from open_r1_jax.pretrained import load_pretrained
from open_r1_jax.training.losses import summed_nll


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory of a pretraining run on the shards")
    p.add_argument("--prepared", required=True, help="the prepare output it trained on")
    args = p.parse_args(argv)
    cfg = load_config(f"{args.run}/config.yaml", [f"data.prepared_dir={args.prepared}"])
    model = load_pretrained(args.run)
    prep = open_prepared(cfg.data, cfg.train.seq_len, model.config)
    spec = PipelineSpec(cfg.train.seq_len, 16, 0, 16, train=False, media=prep.media)
    module = model.module()

    @jax.jit
    def nll(batch):
        logits, _ = module(batch["inputs"], batch["positions"], batch["segment_ids"], **media_kwargs(batch))
        per_row = jax.vmap(lambda lg, t, m: summed_nll(lg[None], t[None], m[None])[0])
        return per_row(logits, batch["targets"], batch["segment_ids"] > 0)

    sums = {kind: np.zeros(4) for kind in ("image", "audio")}  # with media, another's, blind, tokens
    for batch in make_dataset(prep.eval_source, spec):  # every held-out record, text ones too
        if not any(batch[f"has_{k}"].any() for k, _, _ in prep.media):
            continue
        batch = pad_rows(batch, 16)
        tokens = (batch["segment_ids"] > 0).sum(1)
        blind = {**batch, **{f"has_{k}": np.zeros_like(batch[f"has_{k}"]) for k, _, _ in prep.media}}
        other = dict(batch)
        for k, _, _ in prep.media:
            rows = np.flatnonzero(batch[f"has_{k}"])
            other[k] = batch[k].copy()
            other[k][rows] = batch[k][np.roll(rows, 1)]
        score = lambda b: np.asarray(nll(jax.tree.map(jnp.asarray, b)))  # noqa: E731
        seen, swapped, unseen = score(batch), score(other), score(blind)
        for kind in sums:
            rows = batch.get(f"has_{kind}", np.zeros(len(tokens), bool))
            if rows.sum() > 1:  # another document's media exists
                sums[kind] += [seen[rows].sum(), swapped[rows].sum(), unseen[rows].sum(), tokens[rows].sum()]
    out = {}
    print(f"{'held-out documents':<20} {'tokens':>7} {'own media':>10} {'another':>8} {'blind':>7}")
    for kind, (s, o, b, n) in sums.items():
        if n:
            out[kind] = {"tokens": int(n), "loss": s / n, "other_media_loss": o / n, "blind_loss": b / n}
            print(f"{'with an ' + kind:<20} {int(n):>7} {s / n:>10.4f} {o / n:>8.4f} {b / n:>7.4f}")
    print(json.dumps({"benchmark": "media_mixture_loss", "run": args.run, **out}))
    return out


if __name__ == "__main__":
    main()
