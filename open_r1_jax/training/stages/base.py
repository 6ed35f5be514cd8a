"""What a training stage is: the few things that differ between pretraining, DPO, SFT, ... .

The ``Trainer`` (``training/trainer.py``) owns everything else: the mesh, the sharded train state,
the jitted step (exact micro-batch accumulation, clipping, the non-finite guard, float16 loss
scaling, donation), the log / eval / checkpoint cadence, resume, the progress bar, ``metrics.jsonl``,
TensorBoard and ``summary.json``.

To add a stage, write one small file in ``training/stages/`` with a subclass of ``Stage`` and add it
to ``STAGES`` in ``training/stages/__init__.py`` (and the name to ``train.stage`` in ``config/run.py``).
The Trainer calls, in this order:

1. ``initial_weights()``: weights to start from, or None for a fresh seeded model. The default reads
   ``train.init_from`` through ``start_from``, which also replaces ``self.cfg.model`` with the
   weights' architecture.
2. ``setup(ctx)``: build the data. Set ``self.train_iter`` (an iterator of host batches: dicts of
   numpy arrays whose first axis has this process's ``global_batch / process_count`` rows; a grain
   iterator, so that checkpoints save where the stream stopped). ``ctx`` gives the run directory, the
   graphdef, the initial state and a ``put`` function, for stages that precompute on the devices
   (DPO's reference log-probs). Set ``self.frozen`` to device arrays the loss reads but never trains.
3. ``loss_fn(params, model_state, batch, rng) -> (loss, metrics)``, traced once per micro-batch.
   ``batch`` holds one micro-batch of the stage's arrays plus three entries from the Trainer:
   ``denominator`` (``count`` of the whole global batch), ``n_micro`` (micro-batches per step) and
   ``frozen``. Return this micro-batch's *share* of the global objective: the sum of its unit losses
   / ``denominator`` (+ MoE aux losses / ``n_micro``). ``metrics`` are scalar shares in the same
   sense (the Trainer sums them over micro-batches) and must include ``loss``; ``aux_loss``,
   ``expert_counts`` [L,E] and ``dropped`` are logged as expert statistics when present. ``rng`` is
   fresh per step and micro-batch (LSH rotations).
4. ``count(batch)``: the units the loss averages over in a (global) batch, as a traced scalar.
   ``tokens(batch)``: the tokens of a host batch, for tokens/s and ``tokens_seen``.
5. Evaluation: ``eval_batches()`` yields host batches (the same number on every process; the Trainer
   pads short ones with zero rows, which must count for nothing); ``eval_fn(params, model_state,
   batch)`` returns a dict of scalar *sums* over the batch (``batch["frozen"]`` is set); the Trainer
   adds them over the batches and ``eval_metrics(sums)`` turns them into the logged figures (the
   Trainer prefixes ``eval_``).
   ``eval_host(params, model_state)``: figures computed on the host, e.g. from generations (GRPO's
   held-out accuracy), merged into the same ``eval_`` record; ``params`` have adapters folded in.
6. ``next_batch(state)``: the next host batch; the default is ``next(self.train_iter)``. GRPO
   overrides it to generate completions with the current ``state`` before each step.
7. ``trainable(params)``: a tree of Python bools shaped like ``params`` (False = frozen: no gradient,
   no update, no decay), or None to train everything. The default trains only the LoRA adapters
   when ``params`` has them (``lora.rank`` > 0, ``model/lora.py``), else everything. The losses
   always see the model's params, adapters folded in (``training/step.py: model_params``).

Class attributes: ``name``; ``updates_router_bias`` (apply the DeepSeek-V3 bias update after each
step; DPO keeps the policy's biases); ``eval_at_start`` (evaluate the initial weights at step 0).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

from open_r1_jax.config import MODEL_RUNTIME_KEYS, Config, ConfigError
from open_r1_jax.model import lora

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What ``Stage.setup`` may use: nothing here is the stage's to keep but the graphdef."""

    run_dir: Path
    graphdef: Any  # the model structure (``open_r1_jax.model.merge_model`` needs it)
    state: dict  # the initial train state, on the devices
    put: Callable[[dict], dict]  # host batch (this process's rows) -> global device arrays
    rows: int  # rows of a host batch: global_batch / process_count
    mesh: Any = None  # the device mesh, for stages that place frozen weights (a teacher) in its shardings


class Stage:
    name: ClassVar[str] = ""
    updates_router_bias: ClassVar[bool] = True
    eval_at_start: ClassVar[bool] = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.graphdef = None  # set by bind() / setup()
        self.train_iter: Iterator[dict[str, np.ndarray]] | None = None
        self.frozen: Any = None

    def initial_weights(self):
        """An ``open_r1_jax.pretrained.PretrainedModel`` to start from (``train.init_from``), or None
        (seeded init); its context must hold ``train.seq_len``."""
        t = self.cfg.train
        if not t.init_from:
            return None
        pre = self.start_from(t.init_from)
        if t.seq_len > pre.config.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({t.seq_len}) must be <= model.max_seq_len of {t.init_from} ({pre.config.max_seq_len})"
            )
        return pre

    def init_from_tokenizer(self):
        """The tokenizer ``train.init_from`` was trained with (bytes without one), checked against
        ``model.vocab_size``."""
        from open_r1_jax.data.tokenizer import ByteTokenizer, tokenizer_for

        t = self.cfg.train
        tok = tokenizer_for(Path(t.init_from)) if t.init_from else ByteTokenizer()
        if tok.vocab_size > self.cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size ({self.cfg.model.vocab_size}) is smaller than the tokenizer's vocabulary "
                f"({tok.vocab_size})"
            )
        return tok

    def start_from(self, path: str):
        """Load ``path`` (run, checkpoint, export or transformers folder) and take its architecture:
        ``self.cfg.model`` becomes the weights' model, with this config's runtime keys (dtype, kernels, remat)."""
        from open_r1_jax.pretrained import load_pretrained

        pre = load_pretrained(path)
        runtime = {k: getattr(self.cfg.model, k) for k in MODEL_RUNTIME_KEYS}
        self.cfg = dataclasses.replace(self.cfg, model=dataclasses.replace(pre.config, **runtime))
        log.info("%s: starting from %r", self.name, pre)
        return pre

    def bind(self, graphdef) -> Stage:
        """Attach the model structure (what ``setup`` does first); -> self. For steps built without
        the Trainer (tests, benchmarks): ``make_train_step(Pretrain(cfg).bind(graphdef), tx, cfg)``."""
        self.graphdef = graphdef
        return self

    def setup(self, ctx: StageContext) -> None:
        self.bind(ctx.graphdef)

    def trainable(self, params: dict):
        """With LoRA (``lora.rank`` > 0) only the adapters train; otherwise everything (None)."""
        return lora.mask(params) if lora.KEY in params else None

    def count(self, batch: dict) -> jax.Array:
        raise NotImplementedError

    def tokens(self, batch: dict[str, np.ndarray]) -> int:
        raise NotImplementedError

    def loss_fn(self, params: dict, model_state: dict, batch: dict, rng: jax.Array):
        raise NotImplementedError

    @staticmethod
    def with_aux(metrics: dict, aux: dict, batch: dict):
        """-> (``metrics["loss"]`` + this micro-batch's share of the MoE aux loss, metrics with the
        aux loss and the expert statistics): the end of most stages' ``loss_fn``."""
        aux_loss = aux["aux_loss"] / batch["n_micro"]
        metrics = {**metrics, "aux_loss": aux_loss}
        if "expert_counts" in aux:
            metrics["expert_counts"], metrics["dropped"] = aux["expert_counts"], jax.numpy.sum(aux["dropped"])
        return metrics["loss"] + aux_loss, metrics

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(())

    def eval_fn(self, params: dict, model_state: dict, batch: dict) -> dict:
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def eval_host(self, params: dict, model_state: dict) -> dict[str, float]:
        return {}

    def next_batch(self, state: dict) -> dict[str, np.ndarray]:
        return next(self.train_iter)

    def describe(self) -> str:
        """One line for the log: what this stage trains on."""
        return self.name
