"""Pretraining: next-token prediction on packed text (the seed's first stage).

Batch: ``inputs``, ``targets``, ``positions``, ``segment_ids`` [B,T] int32 (segment 0 = padding); with
prepared media (``data/pipeline.py``) also ``image`` / ``has_image``, ``audio`` / ``has_audio``, which
the model reads as each row's prefix.
The loss is the mean NLL over the global batch's real tokens (+ MoE aux losses); evaluation reports
held-out loss, perplexity and bits per byte (tokenizer-independent).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from open_r1_jax.config import ConfigError
from open_r1_jax.data.pipeline import empty_batch, make_dataset
from open_r1_jax.data.text import build_text_data
from open_r1_jax.data.tokenizer import BPETokenizer, tokenizer_file
from open_r1_jax.model import merge_model
from open_r1_jax.model.multimodal import media_kwargs
from open_r1_jax.training.losses import lm_metrics, summed_nll
from open_r1_jax.training.stages.base import Stage, StageContext

KEYS = ("inputs", "targets", "positions", "segment_ids")


def check_tokenizer(source: str, d, what: str) -> None:
    """Refuse data tokenised otherwise than the weights at ``source`` (``what``: the key naming them)
    were trained on: it would train silently on tokens that mean something else to them."""
    theirs = tokenizer_file(Path(source))
    if theirs is None and d.tokenizer != "byte":
        raise ConfigError(
            f"data.tokenizer: {what} {source} was trained on bytes (no tokenizer.json); set data.tokenizer=byte"
        )
    if theirs is not None and (d.tokenizer != "bpe" or Path(d.tokenizer_path or "-").resolve() != theirs.resolve()):
        raise ConfigError(
            f"data.tokenizer / data.tokenizer_path: {what} {source} comes with {theirs}; "
            f"set data.tokenizer=bpe data.tokenizer_path={theirs}"
        )
    if theirs is not None and Tokenizer.from_file(str(theirs)).token_to_id(BPETokenizer.EOS) is None:
        raise ConfigError(
            f"data.tokenizer_path: {theirs} has no {BPETokenizer.EOS} token, the end-of-document token the "
            "data pipeline appends (training with another tokenizer's special tokens is not supported)"
        )


class Pretrain(Stage):
    name = "pretrain"

    def initial_weights(self):
        """``train.init_from`` (continued pretraining), checked against this config's sequence length
        and tokenizer: text tokenised otherwise than the weights were trained on would train silently."""
        pre = super().initial_weights()
        if pre is None:
            return None
        self.eval_at_start = True  # continued pretraining / domain adaptation: the "before" held-out figures
        t, d = self.cfg.train, self.cfg.data
        check_tokenizer(t.init_from, d, "train.init_from")
        return pre

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self.data = build_text_data(self.cfg, ctx.run_dir)
        self.train_iter = self.data.train_iter
        self.token_bytes = jnp.asarray(self.data.tokenizer.token_bytes)

    def count(self, batch):
        return jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))

    def tokens(self, batch) -> int:
        return int(np.count_nonzero(batch["segment_ids"]))

    def _forward(self, params, model_state, batch, rng=None):
        model = merge_model(self.graphdef, params, model_state)
        return model(batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng, **media_kwargs(batch))

    def target_bytes(self, batch, mask) -> jax.Array:
        """UTF-8 bytes of the masked-in targets (bits per byte)."""
        return jnp.sum(jnp.where(mask, self.token_bytes[batch["targets"]], 0).astype(jnp.float32))

    def loss_fn(self, params, model_state, batch, rng):
        logits, aux = self._forward(params, model_state, batch, rng)
        with jax.named_scope("loss"):
            nll, _ = summed_nll(logits, batch["targets"], batch["segment_ids"] > 0)
        return self.with_aux({"loss": nll / batch["denominator"]}, aux, batch)

    def eval_batches(self):
        """``train.eval_batches`` batches of held-out chunks, in order; all-padding ones once they run out
        (every process runs the same number of global eval steps)."""
        if len(self.data.eval_source) == 0:  # data.heldout_percent 0 and no data.eval_sources
            return
        spec = dataclasses.replace(self.data.spec, train=False)
        it = iter(make_dataset(self.data.eval_source, spec))
        for _ in range(self.cfg.train.eval_batches):
            yield next(it, None) or empty_batch(spec, KEYS)

    def eval_fn(self, params, model_state, batch):
        logits, _ = self._forward(params, model_state, batch)
        mask = batch["segment_ids"] > 0
        nll, n_tok = summed_nll(logits, batch["targets"], mask)
        return {"nll": nll, "tokens": n_tok, "bytes": self.target_bytes(batch, mask)}

    def eval_metrics(self, sums):
        return lm_metrics(sums)
