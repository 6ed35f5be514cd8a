"""The reference train step in PyTorch: the same optimiser, schedule, clipping, decay mask and exact
accumulation as ``open_r1_jax.training`` (used by the training parity test and the benchmark).

- Schedule: optax's ``warmup_cosine_decay_schedule`` restated (lr 0 at step 0, linear warmup, cosine
  to ``min_lr`` at ``steps``; the cosine's length excludes the warmup steps).
- Decay mask: parameters with two or more dimensions; norms' scales are not decayed; the router bias
  is a buffer, outside the optimiser.
- Clipping: g *= min(1, clip / ||g||), as optax. (``torch.nn.utils.clip_grad_norm_`` divides by
  ``||g|| + 1e-6`` instead: a 1e-6 relative difference we avoid to keep the comparison tight.)
- torch ``AdamW`` and optax ``adamw`` agree: eps outside the square root, bias correction from step 1,
  decoupled decay multiplied by the learning rate.
"""

from __future__ import annotations

import math

import torch

from torch_ref.losses import summed_nll


def lr_at(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    if warmup and step < warmup:
        return lr * step / warmup
    decay = max(steps - warmup, 1)
    progress = min(step - warmup, decay) / decay
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, train: dict) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(train["beta1"], train["beta2"]), eps=train["eps"])


def train_step(model, opt: torch.optim.Optimizer, batch: dict, step: int, train: dict) -> dict:
    """One optimiser step on a global batch of [G,T] tensors split into micro-batches."""
    g = batch["inputs"].shape[0]
    n_micro = g // (train.get("micro_batch") or g)
    n_total = torch.clamp((batch["segment_ids"] > 0).sum().float(), min=1.0)
    opt.zero_grad(set_to_none=True)
    nll_sum, counts = torch.zeros(()), None
    for i in range(n_micro):
        mb = {k: v[i::n_micro] for k, v in batch.items()}  # strided micro-batches, as open_r1_jax
        logits, aux = model(mb["inputs"], mb["positions"], mb["segment_ids"])
        nll, _ = summed_nll(logits, mb["targets"], mb["segment_ids"] > 0)
        (nll / n_total + aux["aux_loss"] / n_micro).backward()
        nll_sum = nll_sum + nll.detach()
        if "expert_counts" in aux:
            c = aux["expert_counts"].detach()
            counts = c if counts is None else counts + c
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.sqrt(sum(torch.sum(p.grad.double() ** 2) for p in params)).float()
    if train["clip_norm"] > 0:
        factor = torch.clamp(train["clip_norm"] / norm, max=1.0)
        for p in params:
            p.grad.mul_(factor)
    for group in opt.param_groups:
        group["lr"] = lr_at(step, train["lr"], train["min_lr"], train["warmup_steps"], train["steps"])
    opt.step()
    if counts is not None and hasattr(model, "update_router_bias"):
        model.update_router_bias(counts)
    return {"loss": float(nll_sum / n_total), "grad_norm": float(norm)}
