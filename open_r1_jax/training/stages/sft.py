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
from open_r1_jax.data import arith, instruct, media_files, multimodal
from open_r1_jax.data.chat import ChatTemplate, save_template, template_for
from open_r1_jax.data.pipeline import PipelineSpec, make_dataset
from open_r1_jax.data.tokenizer import BPETokenizer
from open_r1_jax.model import merge_model
from open_r1_jax.model.multimodal import media_kwargs
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
        self.media = self.cfg.model.vision.enabled or self.cfg.model.audio.enabled  # one example per row
        report, held_report = instruct.InstructReport(), instruct.InstructReport()
        train, held = self._examples(template, report, held_report)
        for bad in (report.bad + held_report.bad)[:5]:
            log.warning("sft data: skipped %s", bad)
        if self.media:
            self._media_data(ctx, train, held, report, held_report)
        else:
            train_items = instruct.encode_examples(train, self.tokenizer, t.seq_len, report)
            self.held = instruct.encode_examples(held, self.tokenizer, t.seq_len, held_report)
            if not train_items:
                raise instruct.InstructDataError("sft: no training example has a trained token within train.seq_len")
            d = self.cfg.data
            self.spec = PipelineSpec(t.seq_len, ctx.rows, t.seed, d.packing_bins, True, d.shards)
            self.train_iter = iter(make_dataset(instruct.ItemSource(train_items), self.spec, KEYS))
        if isinstance(train, multimodal.DemoExamples):  # drawn on access: nothing to count beforehand
            log.info("sft data: the multimodal demo, %d train / %d held-out examples drawn on access", len(train),
                     len(held))  # fmt: skip
        else:
            log.info("sft data: train %s; held-out %s", report.summary(), held_report.summary())
        (ctx.run_dir / "sft_data.json").write_text(
            json.dumps({"train": dataclasses.asdict(report), "heldout": dataclasses.asdict(held_report)}, indent=2)
        )
        self.token_bytes = jnp.asarray(self.tokenizer.token_bytes)

    def _examples(self, template, report, held_report):
        """(train, held-out) examples: of sft.train_path / eval_path, or of the embedded demo."""
        s, t = self.cfg.sft, self.cfg.train
        if s.train_path:
            if self.media:  # records may name an image or audio file (data/media_files.py)
                read = lambda path, r: media_files.read_examples(path, template, s.max_bad_fraction, r, self.cfg.model)
            else:
                read = lambda path, r: instruct.read_examples(path, template, s.max_bad_fraction, r)
            return read(s.train_path, report), (read(s.eval_path, held_report) if s.eval_path else [])
        if s.demo == "multimodal":  # drawn on access: a list of media would not fit in memory
            train = multimodal.DemoExamples(
                self.cfg.model, s.demo_examples, t.seed, False, None, s.demo_questions, s.demo_blind, s.demo_image_rows
            )
            return train, multimodal.DemoExamples(self.cfg.model, s.demo_eval_examples, t.seed, True)
        demo = arith.sft_examples if s.demo == "arith" else instruct.demo_examples
        train = demo(False, s.demo_examples, t.seed, t.seq_len)
        if not train:
            raise ConfigError(
                f"train.seq_len ({t.seq_len}): the embedded demo has no function that short; use "
                "train.seq_len >= 128, or give sft.train_path"
            )
        return train, demo(True, s.demo_eval_examples, t.seed, t.seq_len)

    def _media_data(self, ctx, train, held, report, held_report) -> None:
        """Unpacked rows with the media arrays (data/multimodal.py)."""
        t = self.cfg.train
        if isinstance(train, multimodal.DemoExamples):
            need = multimodal.longest_demo_row(self.tokenizer, train.questions)
            if t.seq_len < need:
                raise ConfigError(f"train.seq_len ({t.seq_len}): the multimodal demo's rows need {need} tokens")
            report.examples, held_report.examples = len(train), len(held)
        else:
            train = multimodal.keep_trainable(train, self.tokenizer, t.seq_len, report)
            held = multimodal.keep_trainable(held, self.tokenizer, t.seq_len, held_report)
            if not train:
                raise instruct.InstructDataError("sft: no training example has a trained token within train.seq_len")
        rows = lambda examples: multimodal.MediaRows(examples, self.tokenizer, t.seq_len, self.cfg.model)
        self.held = rows(held) if len(held) else None
        self.train_iter = multimodal.train_batches(rows(train), ctx.rows, t.seed, jax.process_index(),
                                                   jax.process_count())  # fmt: skip
        self.rows = ctx.rows

    def count(self, batch):
        return jnp.sum(trained(batch))

    def tokens(self, batch) -> int:
        return int(np.count_nonzero(batch["segment_ids"]))

    def _forward(self, params, model_state, batch, rng=None):
        model = merge_model(self.graphdef, params, model_state)
        return model(batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng, **media_kwargs(batch))

    def loss_fn(self, params, model_state, batch, rng):
        logits, aux = self._forward(params, model_state, batch, rng)
        nll, _ = summed_nll(logits, batch["targets"], trained(batch))
        return self.with_aux({"loss": nll / batch["denominator"]}, aux, batch)

    def eval_batches(self):
        """The held-out examples packed in order, ``train.eval_batches`` batches at most; all-padding
        batches once they run out (every process runs the same number of eval steps)."""
        if not self.held:
            return
        if self.media:
            yield from self._media_eval_batches()
            return
        spec = dataclasses.replace(self.spec, train=False)
        it = iter(make_dataset(instruct.ItemSource(self.held), spec, KEYS))
        for _ in range(self.cfg.train.eval_batches):
            yield next(it, None) or {k: np.zeros((spec.batch, spec.seq_len), np.int32) for k in BATCH_KEYS}

    def _media_eval_batches(self):
        it = multimodal.eval_batches(self.held, self.rows)
        first = next(it)
        yield first
        for _ in range(self.cfg.train.eval_batches - 1):  # then all-padding batches of the same shapes
            yield next(it, None) or {k: np.zeros_like(v) for k, v in first.items()}

    def eval_fn(self, params, model_state, batch):
        logits, _ = self._forward(params, model_state, batch)
        mask = trained(batch)
        nll, n_tok = summed_nll(logits, batch["targets"], mask)
        n_bytes = jnp.sum(mask * self.token_bytes[batch["targets"]])
        sums = {"nll": nll, "tokens": n_tok, "bytes": n_bytes}
        if self.media:  # a row is answered when every trained token is the argmax (= greedy decoding's answer)
            wrong = jnp.sum(mask * (jnp.argmax(logits, -1) != batch["targets"]), axis=1)  # [B]
            has = jnp.sum(mask, axis=1) > 0
            sums |= {"answered": jnp.sum(has & (wrong == 0)), "rows": jnp.sum(has)}
        return sums

    def eval_metrics(self, sums):
        out = lm_metrics(sums)
        if sums.get("rows"):
            out["answer_accuracy"] = sums["answered"] / sums["rows"]
        return out

    def describe(self) -> str:
        return f"sft on {self.cfg.sft.train_path or f'the embedded {self.cfg.sft.demo} demo'}"
