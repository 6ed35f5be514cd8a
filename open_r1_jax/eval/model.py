"""The model under evaluation: any folder ``load_pretrained`` reads, its tokenizer, and batched scoring.

Legend: B rows per call, T tokens per row (a multiple of ``ALIGN``), V vocabulary.

Scoring compiles once per (B, T): rows are right-padded to a multiple of ``ALIGN`` (segment 0, which
real tokens never attend to) and short batches are padded with empty rows. ``loglikelihood`` follows
lm-eval-harness: context + continuation cut on the left to ``max_len + 1`` tokens (``max_len`` =
``model.max_seq_len``, as lm-eval's ``max_position_embeddings``), and the summed log-probability of the
continuation. Requests whose inputs agree up to the continuation's last token (the four answer
letters of a multiple-choice question) share one forward pass, and that pass computes the LM head
and the log-softmax only at the K positions that predict continuation tokens (``logits_at``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

ALIGN = 64


class EvalModel:
    def __init__(self, path: str | Path, step: int | None = None, progress: bool = True, **attention):
        """``attention``: keys of ``model.attention`` that need no new weights (e.g. kind="lsh")."""
        from open_r1_jax.data.tokenizer import tokenizer_for
        from open_r1_jax.pretrained import PretrainedModel, load_pretrained

        pre = load_pretrained(path, step)
        if attention:
            from open_r1_jax.checkpoint import model_config
            from open_r1_jax.config import to_dict

            cfg = dataclasses.replace(pre.config, attention=dataclasses.replace(pre.config.attention, **attention))
            pre = PretrainedModel(model_config(to_dict(cfg)), pre.params, pre.model_state, pre.source, pre.step)
        self.pre, self.path, self.progress = pre, Path(path), progress
        self.config = pre.config
        self.tokenizer = tokenizer_for(Path(path))
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(
                f"{path}: the tokenizer has {self.tokenizer.vocab_size} tokens, "
                f"model.vocab_size is {self.config.vocab_size}"
            )
        graphdef = pre.graphdef

        def score(params, model_state, tokens, segment_ids, last):
            """tokens/segment_ids [B,T], last [B] -> (log p(tokens[:, j+1]) at j [B,T-1], log-softmax at last [B,V])."""
            from open_r1_jax.model import merge_model

            logits, _ = merge_model(graphdef, params, model_state)(tokens, None, segment_ids)
            lse = jax.nn.logsumexp(logits, axis=-1)  # [B,T]
            target = jnp.take_along_axis(logits[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0] - lse[:, :-1]
            row = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]  # [B,V]
            return target, row - jnp.take_along_axis(lse, last[:, None], axis=1)

        def score_at(params, model_state, tokens, segment_ids, at):
            """tokens/segment_ids [B,T], at [B,K] -> log-softmax at those positions [B,K,V]."""
            from open_r1_jax.model import merge_model

            logits, _ = merge_model(graphdef, params, model_state)(tokens, None, segment_ids, logits_at=at)
            return jax.nn.log_softmax(logits, axis=-1)

        self._score = jax.jit(score)
        self._score_at = jax.jit(score_at)

    def forward_logits(self, tokens: np.ndarray) -> np.ndarray:
        return np.asarray(self.pre(tokens))

    def score_rows(self, rows: list[list[int]], batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token rows -> per row (log p of each next token [len-1], log-softmax after the last token [V])."""
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(rows)  # type: ignore[list-item]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a shape
        bar = tqdm(total=len(rows), desc="scoring", disable=not self.progress, leave=False)

        def collect(idx, result):
            target, row = jax.device_get(result)
            for r, i in enumerate(idx):
                out[i] = (target[r, : len(rows[i]) - 1], row[r])
            bar.update(len(idx))

        pending = None  # the batch in flight: the next one is prepared and dispatched before it is read
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            t = -(-max(len(rows[i]) for i in idx) // ALIGN) * ALIGN
            tokens = np.zeros((batch, t), np.int32)
            seg = np.zeros((batch, t), np.int32)
            last = np.zeros(batch, np.int32)
            for r, i in enumerate(idx):
                tokens[r, : len(rows[i])], seg[r, : len(rows[i])], last[r] = rows[i], 1, len(rows[i]) - 1
            result = self._score(self.pre.params, self.pre.model_state, tokens, seg, last)
            if pending:
                collect(*pending)
            pending = (idx, result)
        if pending:
            collect(*pending)
        bar.close()
        return out

    def score_positions(self, rows: list[list[int]], k: int, batch: int) -> list[np.ndarray]:
        """Token rows -> per row the log-softmax [k,V] after each of its last ``k`` tokens (rows shorter
        than ``k`` repeat their first position). One compilation per (batch, padded length)."""
        out: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a shape
        bar = tqdm(total=len(rows), desc="scoring", disable=not self.progress, leave=False)

        def collect(idx, result):
            result = np.asarray(result)
            for r, i in enumerate(idx):
                out[i] = result[r]
            bar.update(len(idx))

        pending = None  # the batch in flight: the next one is prepared and dispatched before it is read
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            t = -(-max(len(rows[i]) for i in idx) // ALIGN) * ALIGN
            tokens = np.zeros((batch, t), np.int32)
            seg = np.zeros((batch, t), np.int32)
            at = np.zeros((batch, k), np.int32)
            for r, i in enumerate(idx):
                n = len(rows[i])
                tokens[r, :n], seg[r, :n] = rows[i], 1
                at[r] = np.maximum(np.arange(n - k, n), 0)
            result = self._score_at(self.pre.params, self.pre.model_state, tokens, seg, at)
            if pending:
                collect(*pending)
            pending = (idx, result)
        if pending:
            collect(*pending)
        bar.close()
        return out

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]], batch: int = 16) -> list[float]:
        """(context ids, continuation ids) -> summed log-probability of the continuation (lm-eval's rule)."""
        max_len = self.config.max_seq_len
        inputs, keys, wholes = [], {}, []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("loglikelihood: an empty continuation")
            whole = (list(ctx) + list(cont))[-(max_len + 1) :]
            inp = tuple(whole[:-1])
            if inp not in keys:
                keys[inp] = len(inputs)
                inputs.append(list(inp))
            wholes.append((whole, keys[inp], min(len(cont), len(whole) - 1)))
        k_max = max(k for _, _, k in wholes)
        scored = self.score_positions(inputs, k_max, batch)
        out = []
        for whole, row, k in wholes:
            # the continuation's k tokens are predicted at the input's last k positions: rows
            # k_max - k ... k_max - 1 of the scored positions
            logp = scored[row]
            targets = whole[len(whole) - k :]
            out.append(float(sum(logp[k_max - k + j, tok] for j, tok in enumerate(targets))))
        return out
