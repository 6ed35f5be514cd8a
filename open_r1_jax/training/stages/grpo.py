"""GRPO (DeepSeekMath, DeepSeek-R1; TRL's GRPOTrainer): reinforcement learning with verifiable rewards.

Each generation batch: P = global_batch / G prompts (``data/prompts.py``), G completions each sampled
by the KV-cache generator (``generate.py``) from the current policy, scored by the reward functions
(``rewards.py``, weighted sum r). Advantages within each group of G: A = r - mean(r), divided by
std(r) + 1e-4 (unbiased, as torch's ``std``) when ``grpo.scale_rewards``. Per completion token, with
ratio = exp(logp - logp_old) and the k3 estimator of KL(policy || reference):

    loss_t = -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) + beta (exp(ref - logp) - (ref - logp) - 1)

``grpo.loss_type`` says what the loss averages over (TRL's names): ``bnpo`` every completion token of
the global batch (the default; TRL's ``dapo`` normalises the same way), ``grpo`` each sequence's
tokens, then the sequences (the DeepSeekMath formula), ``dr_grpo`` a constant rows x max_new_tokens.
``grpo.num_iterations`` optimizer steps reuse one generation batch; its log-probs under the policy
that sampled it (``old_logp``) are kept from the first (with one iteration, logp_old = stop_gradient(logp)).
The reference (the starting weights, frozen) scores each batch once, at generation.

``grpo.process_reward`` adds DeepSeekMath's process supervision (its section 4.1.3): a function scores
each step of a completion (``rewards.py``); the step rewards are normalised over all the steps of the
group (mean, and std when ``scale_rewards``), and a completion token's advantage becomes the outcome's
plus ``process_weight`` x the sum of the normalised rewards of the steps that end at or after it.

Batch [B = global_batch completions, T = train.seq_len]: ``inputs``, ``targets``, ``positions``,
``segment_ids``, ``completion_mask`` (targets that are completion tokens, the end-of-text token
included), ``token_weight`` (mask / completion tokens of the batch, for token means), ``advantages``
[B] ([B,T] with a process reward), ``old_logp`` / ``ref_logp`` [B,T] when used, and per-row figures
logged under TRL's names (``reward``, ``reward_std``, ``rewards/<name>``, ``frac_reward_zero_std``,
``completion_length``; ``kl`` and ``clip_ratio`` come from the loss). Evaluation: greedy completions of
the held-out prompts, ``eval_accuracy`` (the accuracy reward) and ``eval_format``, also before training.
"""

from __future__ import annotations

import bisect
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from open_r1_jax import rewards as R
from open_r1_jax.data.chat import ChatTemplate, template_for
from open_r1_jax.data.pipeline import shuffled_batches
from open_r1_jax.data.prompts import PromptReport, load_prompts
from open_r1_jax.data.tokenizer import BPETokenizer
from open_r1_jax.generate import Generator, Sampling
from open_r1_jax.model import merge_model
from open_r1_jax.training.losses import token_nll
from open_r1_jax.training.stages.base import Stage, StageContext
from open_r1_jax.training.step import model_params

log = logging.getLogger("open_r1_jax")


def grpo_token_losses(logp, old_logp, ref_logp, advantages, eps_low: float, eps_high: float, beta: float):
    """Per-token log-probs [B,T] and advantages [B] (or per token, [B,T]) -> (loss, kl, low-clipped,
    high-clipped) [B,T]."""
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None] if advantages.ndim == 1 else advantages
    surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
    delta = ref_logp - logp
    kl = jnp.exp(delta) - delta - 1
    return -surrogate + beta * kl, kl, (ratio < 1 - eps_low) & (a < 0), (ratio > 1 + eps_high) & (a > 0)


def unit_losses(per_token, mask, loss_type: str):
    """The sum of a batch's unit losses (tokens; or sequences, for ``grpo``), to divide by ``units``."""
    if loss_type == "grpo":
        return jnp.sum(jnp.sum(per_token * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))
    return jnp.sum(per_token * mask)


def units(mask, loss_type: str, max_new_tokens: int):
    if loss_type == "bnpo":
        return jnp.sum(mask)
    rows = jnp.asarray(mask.shape[0], jnp.float32)
    return rows if loss_type == "grpo" else rows * max_new_tokens


def group_advantages(r: np.ndarray, g: int, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rewards [P*G] (groups contiguous) -> (advantages [P*G], each row's group std [P*G])."""
    groups = r.reshape(-1, g).astype(np.float64)
    std = groups.std(axis=1, ddof=1, keepdims=True)
    adv = groups - groups.mean(axis=1, keepdims=True)
    if scale:
        adv = adv / (std + 1e-4)
    return adv.reshape(-1).astype(np.float32), np.broadcast_to(std, groups.shape).reshape(-1).astype(np.float32)


def process_advantages(steps: list[tuple[np.ndarray, np.ndarray]], lengths: list[int], g: int, scale: bool):
    """DeepSeekMath's process supervision. Per row [P*G] (groups contiguous) its steps (the completion
    token that ends each, their rewards) and its completion length -> per row the advantage of each
    completion token [length]: every step reward normalised by the mean (and std) of all the steps of
    its group, a token's advantage the sum of those of the steps that end at or after it."""
    out = []
    for first in range(0, len(steps), g):
        group = steps[first : first + g]
        r = np.concatenate([rew for _, rew in group]).astype(np.float64)
        mean = r.mean() if r.size else 0.0
        std = r.std(ddof=1) if r.size > 1 else 0.0
        for (ends, rew), n in zip(group, lengths[first : first + g], strict=True):
            norm = (rew - mean) / (std + 1e-4) if scale else rew - mean
            at = np.zeros(n, np.float64)
            np.add.at(at, np.minimum(ends, n - 1), norm)
            out.append(np.cumsum(at[::-1])[::-1].astype(np.float32))  # the steps ending at or after each token
    return out


def keep_groups(rewards: np.ndarray, n: int) -> np.ndarray:
    """Group rewards [K,G] (or [K,G,C]: a group differs when any of its C figures does; K >= n groups,
    in random order) -> the rows [n*G] of n groups: first those whose rewards differ (DAPO's dynamic
    sampling), then, if too few differ, the others in order."""
    differ = (rewards.max(1) > rewards.min(1)).reshape(len(rewards), -1).any(1)
    groups = np.concatenate([np.flatnonzero(differ), np.flatnonzero(~differ)])[:n]
    g = rewards.shape[1]
    return (np.sort(groups)[:, None] * g + np.arange(g)).reshape(-1)


class GRPO(Stage):
    name = "grpo"
    updates_router_bias = False  # as DPO: the policy keeps its routing
    eval_at_start = True  # the cold start's held-out accuracy

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        g, t = self.cfg.grpo, self.cfg.train
        self.tokenizer = self.init_from_tokenizer()
        template = ChatTemplate(template_for(t.init_from), eos_token=BPETokenizer.EOS)
        budget = t.seq_len - g.max_new_tokens - 1
        reports = PromptReport(), PromptReport()
        load = lambda path, held, n, rep: load_prompts(path, held, n, t.seed, template, self.tokenizer, budget, rep)
        self.prompts = load(g.train_path, False, g.demo_examples, reports[0])
        self.held = load(g.eval_path, True, g.demo_eval_examples, reports[1]) if g.eval_path or not g.train_path else []
        for bad in (reports[0].bad + reports[1].bad)[:5]:
            log.warning("grpo data: skipped %s", bad)
        log.info("grpo prompts: train %s; held-out %s", reports[0].summary(), reports[1].summary())
        self.rewards = R.load_rewards(g.rewards, g.reward_weights, g.reward_file)
        self.process = R.load_process_reward(g.process_reward, g.reward_file)
        self.train_iter = shuffled_batches(
            {"index": np.arange(len(self.prompts))}, ctx.rows // g.num_generations, t.seed,
            jax.process_index(), jax.process_count(),
        )  # fmt: skip
        self.put = ctx.put
        self.generator = Generator(self.cfg.model, ctx.state["params"], ctx.state["model_state"])
        # the reference: the starting weights (a copy: the train step donates the policy's buffers)
        self.reference = jax.tree.map(jnp.copy, ctx.state["params"]) if g.beta > 0 else None
        self._logps = jax.jit(lambda p, s, b: self._token_logps(p, s, b)[0])
        self.pending, self.uses, self.failures = None, 0, {}
        self.timings: list[dict] = []  # per generation batch: generate_s, score_s, logps_s (benchmarks/grpo_step.py)

    # ------------------------------------------------------------------ generation (host side)

    def _complete(self, params, model_state, prompts, sampling: Sampling):
        """-> (completion token lists with the end-of-text token when generated, texts)."""
        g, eos = self.cfg.grpo, self.tokenizer.eos_id
        self.generator.params, self.generator.model_state = params, model_state
        decode = self.tokenizer.decode
        stop = (lambda i, toks: any(s in decode(toks) for s in g.stop)) if g.stop else None
        out = self.generator.generate([p.ids for p in prompts], g.max_new_tokens, sampling, [eos], should_stop=stop)
        tokens, texts = [], []
        for toks, finish in zip(out.tokens, out.finish, strict=True):
            toks, text = list(toks), decode(toks)
            if any(s in text for s in g.stop):  # the stop string ends the completion, kept in it (no end token)
                toks = next(toks[:k] for k in range(1, len(toks) + 1) if any(s in decode(toks[:k]) for s in g.stop))
                text = decode(toks)
            elif finish == "stop":
                toks = toks + [eos]
            tokens.append(toks)
            texts.append(text)
        return tokens, texts

    def _score(self, prompts, lengths: list[int], texts) -> np.ndarray:
        g = self.cfg.grpo
        kw = {"answer": [p.answer for p in prompts], "completion_lengths": lengths, "max_new_tokens": g.max_new_tokens}
        per_fn, failures = R.score(self.rewards, [p.text for p in prompts], texts, **kw)
        for name, n in failures.items():
            if name not in self.failures:
                log.warning("grpo: reward %r raised or returned no number for %d completions (scored 0)", name, n)
            self.failures[name] = self.failures.get(name, 0) + n
        return per_fn

    def _score_steps(self, prompts, tokens, texts) -> list[tuple[np.ndarray, np.ndarray]]:
        """The process reward's steps per completion: (the completion token ending each, its reward)."""
        g, decode = self.cfg.grpo, self.tokenizer.decode
        kw = {"answer": [p.answer for p in prompts], "completion_lengths": [len(x) for x in tokens],
              "max_new_tokens": g.max_new_tokens}  # fmt: skip
        steps, failed = R.score_steps(self.process, [p.text for p in prompts], texts, **kw)
        if failed:
            if g.process_reward not in self.failures:
                log.warning("grpo: process reward %r raised for %d completions (no steps)", g.process_reward, failed)
            self.failures[g.process_reward] = self.failures.get(g.process_reward, 0) + failed
        out = []
        for toks, rows in zip(tokens, steps, strict=True):
            # the first token whose prefix decodes to the step's end character (prefix lengths only grow)
            reach = lambda k, toks=toks: len(decode(toks[: k + 1]))  # noqa: E731
            ends = [bisect.bisect_left(range(len(toks)), e, key=reach) for e, _ in rows]
            out.append((np.asarray(ends, np.int64), np.asarray([r for _, r in rows], np.float64)))
        return out

    def generation_batch(self, state) -> dict:
        """One generation batch from the policy in ``state``: the next prompts, G samples each, their
        rewards, advantages and kept log-probs -> host arrays {inputs, targets, positions, segment_ids,
        completion_mask, token_weight [B,T]; advantages [B] or [B,T]; reward, reward_std, ... [B];
        old_logp / ref_logp [B,T] where used}. Public for benchmarks (``grpo_noise.py``) that take
        gradients of the stage's loss on batches it made."""
        g, t = self.cfg.grpo, self.cfg.train
        t0 = time.perf_counter()
        params = model_params(state["params"], self.cfg)
        step = int(jax.device_get(state["step"]))
        index = np.concatenate([next(self.train_iter)["index"] for _ in range(g.oversample)])
        prompts = [self.prompts[i] for i in index for _ in range(g.num_generations)]
        sampling = Sampling(temperature=g.temperature, top_p=g.top_p, seed=t.seed * 1_000_003 + step)
        tokens, texts = self._complete(params, state["model_state"], prompts, sampling)
        t1 = time.perf_counter()
        lengths = [len(x) for x in tokens]
        per_fn = self._score(prompts, lengths, texts)
        weights = np.asarray([w for _, _, w in self.rewards], np.float32)
        pool = (per_fn @ weights).reshape(-1, g.num_generations)  # [oversample * P, G]
        key = pool
        if self.process is not None:
            steps = self._score_steps(prompts, tokens, texts)
            step_mean = np.asarray([r.mean() if r.size else 0.0 for _, r in steps], np.float32)
            key = np.stack([pool, step_mean.reshape(pool.shape)], -1)  # a group teaches when either differs
        rows = keep_groups(key, len(index) // g.oversample)  # [P*G] rows of the kept groups
        prompts, tokens, texts = [prompts[r] for r in rows], [tokens[r] for r in rows], [texts[r] for r in rows]
        lengths, per_fn = [lengths[r] for r in rows], per_fn[rows]
        reward = per_fn @ weights
        adv, std = group_advantages(reward, g.num_generations, g.scale_rewards)
        b = self._rows(prompts, tokens)
        if self.process is not None:  # per-token advantages [B,T]: the outcome's plus the steps'
            steps = [steps[r] for r in rows]
            per_token = process_advantages(steps, lengths, g.num_generations, g.scale_rewards)
            adv = (adv[:, None] * b["completion_mask"]).astype(np.float32)
            for i, (p, a) in enumerate(zip(prompts, per_token, strict=True)):
                adv[i, len(p.ids) - 1 : len(p.ids) - 1 + len(a)] += g.process_weight * a
            b[f"rewards/{g.process_reward}"] = step_mean[rows]
        b.update(advantages=adv, reward=reward, reward_std=std, frac_reward_zero_std=(std == 0).astype(np.float32))
        b["completion_length"] = np.asarray(lengths, np.float32)
        if g.oversample > 1:  # the share of sampled groups that had nothing to teach, before the selection
            b["pool_frac_reward_zero_std"] = np.full(len(rows), np.mean(pool.max(1) == pool.min(1)), np.float32)
        for j, (name, _, _) in enumerate(self.rewards):
            b[f"rewards/{name}"] = per_fn[:, j]
        t2 = time.perf_counter()
        dev = self.put(b)
        if g.num_iterations > 1:
            b["old_logp"] = np.asarray(jax.device_get(self._logps(params, state["model_state"], dev)))
        if self.reference is not None:
            b["ref_logp"] = np.asarray(jax.device_get(self._logps(self.reference, state["model_state"], dev)))
        self.timings.append({"generate_s": t1 - t0, "score_s": t2 - t1, "logps_s": time.perf_counter() - t2})
        return b

    def _rows(self, prompts, tokens) -> dict[str, np.ndarray]:
        b, t = len(prompts), self.cfg.train.seq_len
        out = {k: np.zeros((b, t), np.int32) for k in ("inputs", "targets", "segment_ids", "completion_mask")}
        for i, (p, c) in enumerate(zip(prompts, tokens, strict=True)):
            full = np.concatenate([p.ids, np.asarray(c, np.int32)])
            n = len(full) - 1  # <= seq_len: prompts fit seq_len - max_new_tokens - 1
            out["inputs"][i, :n], out["targets"][i, :n], out["segment_ids"][i, :n] = full[:-1], full[1:], 1
            out["completion_mask"][i, len(p.ids) - 1 : n] = 1
        out["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
        out["token_weight"] = (out["completion_mask"] / max(out["completion_mask"].sum(), 1)).astype(np.float32)
        return out

    def next_batch(self, state):
        if self.pending is None or self.uses >= self.cfg.grpo.num_iterations:
            self.pending, self.uses = self.generation_batch(state), 0
        self.uses += 1
        return self.pending

    # ------------------------------------------------------------------ the loss (device side)

    def _token_logps(self, params, model_state, batch, rng=None):
        model = merge_model(self.graphdef, params, model_state)
        logits, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"], rng=rng)
        if self.cfg.grpo.logp_temperature:  # the sampling distribution's log-probs (TRL does the same)
            logits = logits / self.cfg.grpo.temperature
        return -token_nll(logits, batch["targets"]), aux

    def count(self, batch):
        g = self.cfg.grpo
        return units(batch["completion_mask"].astype(jnp.float32), g.loss_type, g.max_new_tokens)

    def tokens(self, batch) -> int:
        return int(np.count_nonzero(batch["segment_ids"]))

    def loss_fn(self, params, model_state, batch, rng):
        g = self.cfg.grpo
        logp, aux = self._token_logps(params, model_state, batch, rng)
        mask, w = batch["completion_mask"].astype(jnp.float32), batch["token_weight"]
        old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
        ref = batch["ref_logp"] if "ref_logp" in batch else jax.lax.stop_gradient(logp)
        per_token, kl, low, high = grpo_token_losses(
            logp, old, ref, batch["advantages"], g.epsilon, g.epsilon_high or g.epsilon, g.beta
        )
        rows = lambda x: jnp.sum(x) / self.cfg.train.global_batch  # a row mean's share
        metrics = {
            "loss": unit_losses(per_token, mask, g.loss_type) / batch["denominator"],
            "kl": jnp.sum(kl * w),
            "clip_ratio": jnp.sum((low | high) * w),
            "clip_ratio/low_mean": jnp.sum(low * w),
            "clip_ratio/high_mean": jnp.sum(high * w),
        }
        row_keys = ("reward", "reward_std", "frac_reward_zero_std", "pool_frac_reward_zero_std", "completion_length")
        metrics.update({k: rows(batch[k]) for k in batch if k in row_keys or k.startswith("rewards/")})
        return self.with_aux(metrics, aux, batch)

    def eval_host(self, params, model_state) -> dict[str, float]:
        """Greedy completions of the held-out prompts: the accuracy and format rewards' means."""
        if not self.held:
            return {}
        tokens, texts = self._complete(params, model_state, self.held, Sampling())
        answers = [p.answer for p in self.held]
        return {
            "accuracy": float(np.mean(R.accuracy(None, texts, answers))),
            "format": float(np.mean(R.format_reward(None, texts))),
            "completion_length": float(np.mean([len(x) for x in tokens])),
        }

    def describe(self) -> str:
        g = self.cfg.grpo
        return f"grpo on {g.train_path or 'the embedded arithmetic demo'}, G={g.num_generations}"
