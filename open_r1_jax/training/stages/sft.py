"""Supervised fine-tuning (TRL's SFTTrainer conventions): next-token loss on the trained tokens only.

Data: ``data/instruct.py`` (prompt-completion or chat messages, or the embedded instruction demo),
tokenised with the tokenizer of ``train.init_from`` (bytes without one), packed with segment ids as
in pretraining. Batch: ``inputs``, ``targets``, ``loss_mask``, ``positions``, ``segment_ids`` [B,T].
The loss is the mean NLL over the global batch's trained targets (+ MoE aux losses); evaluation
reports the held-out completion loss, perplexity and bits per byte, also before training.

The chat template (``sft.chat_template``, else ``train.init_from``'s, else ChatML) is written to the
run's ``tokenizer_config.json``: the export, the server and GRPO render conversations as trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax.config import ConfigError
from open_r1_jax.data import arith, instruct
from open_r1_jax.data.chat import ChatTemplate, save_template, template_for
from open_r1_jax.data.pipeline import PipelineSpec, make_dataset
from open_r1_jax.data.tokenizer import BPETokenizer
from open_r1_jax.model import merge_model
from open_r1_jax.training.losses import lm_metrics, summed_nll
from open_r1_jax.training.stages.base import Stage, StageContext

log = logging.getLogger("open_r1_jax")
KEYS = ("inputs", "targets", "loss_mask")
BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


def trained(batch) -> jax.Array:
    """[B,T] 1.0 where the target is trained (a real token of a completion / assistant turn)."""
    return (batch["loss_mask"] * (batch["segment_ids"] > 0)).astype(jnp.float32)


class SFT(Stage):
    name = "sft"
    eval_at_start = True  # the "before" figures of the held-out completions

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        s, t = self.cfg.sft, self.cfg.train
        self.tokenizer = self.init_from_tokenizer()
        template = ChatTemplate(s.chat_template or template_for(t.init_from), eos_token=BPETokenizer.EOS)
        save_template(ctx.run_dir, template.source)
        report, held_report = instruct.InstructReport(), instruct.InstructReport()
        if s.train_path:
            train = instruct.read_examples(s.train_path, template, s.max_bad_fraction, report)
            held = instruct.read_examples(s.eval_path, template, s.max_bad_fraction, held_report) if s.eval_path else []
        else:
            demo = arith.sft_examples if s.demo == "arith" else instruct.demo_examples
            train = demo(False, s.demo_examples, t.seed, t.seq_len)
            held = demo(True, s.demo_eval_examples, t.seed, t.seq_len)
            if not train:
                raise ConfigError(
                    f"train.seq_len ({t.seq_len}): the embedded demo has no function that short; use "
                    "train.seq_len >= 128, or give sft.train_path"
                )
        for bad in (report.bad + held_report.bad)[:5]:
            log.warning("sft data: skipped %s", bad)
        train_items = instruct.encode_examples(train, self.tokenizer, t.seq_len, report)
        self.held = instruct.encode_examples(held, self.tokenizer, t.seq_len, held_report)
        if not train_items:
            raise instruct.InstructDataError("sft: no training example has a trained token within train.seq_len")
        log.info("sft data: train %s; held-out %s", report.summary(), held_report.summary())
        (ctx.run_dir / "sft_data.json").write_text(
            json.dumps({"train": dataclasses.asdict(report), "heldout": dataclasses.asdict(held_report)}, indent=2)
        )
        self.spec = PipelineSpec(t.seq_len, ctx.rows, t.seed, self.cfg.data.packing_bins, True, self.cfg.data.shards)
        self.train_iter = iter(make_dataset(instruct.ItemSource(train_items), self.spec, KEYS))
        self.token_bytes = jnp.asarray(self.tokenizer.token_bytes)

    def count(self, batch):
        return jnp.sum(trained(batch))

    def tokens(self, batch) -> int:
        return int(np.count_nonzero(batch["segment_ids"]))

    def _nll(self, params, model_state, batch, rng=None):
        model = merge_model(self.graphdef, params, model_state)
        logits, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng)
        return summed_nll(logits, batch["targets"], trained(batch)), aux

    def loss_fn(self, params, model_state, batch, rng):
        (nll, _), aux = self._nll(params, model_state, batch, rng)
        return self.with_aux({"loss": nll / batch["denominator"]}, aux, batch)

    def eval_batches(self):
        """The held-out examples packed in order, ``train.eval_batches`` batches at most; all-padding
        batches once they run out (every process runs the same number of eval steps)."""
        if not self.held:
            return
        spec = dataclasses.replace(self.spec, train=False)
        it = iter(make_dataset(instruct.ItemSource(self.held), spec, KEYS))
        for _ in range(self.cfg.train.eval_batches):
            yield next(it, None) or {k: np.zeros((spec.batch, spec.seq_len), np.int32) for k in BATCH_KEYS}

    def eval_fn(self, params, model_state, batch):
        (nll, n_tok), _ = self._nll(params, model_state, batch)
        n_bytes = jnp.sum(trained(batch) * self.token_bytes[batch["targets"]])
        return {"nll": nll, "tokens": n_tok, "bytes": n_bytes}

    def eval_metrics(self, sums):
        return lm_metrics(sums)

    def describe(self) -> str:
        return f"sft on {self.cfg.sft.train_path or f'the embedded {self.cfg.sft.demo} demo'}"
