"""``train.offload_dir``: the AdamW moments in tensorstore arrays on local disk (NVMe), streamed through
the update in groups of layers, as ZeRO-Infinity does for models whose host memory is the limit.

Memory: between steps the moments are on disk only; during the update one group's moments are in
memory at a time, plus the next group's being read and the previous group's being written
(``train.offload_group_layers`` blocks a group; the embedding, final norm and LM head are one more).

The step (training/step.py) computes the gradient and returns it instead of updating;
``DiskMoments.update`` takes its global norm, then runs the optimizer chain
(``optim.optimizer_parts``: the clipping, by that norm, then AdamW with its schedule) on each group:
read its moments, update the group's parameters and moments in one jitted function, write the
moments back. Past the norm the chain is elementwise and its step counts are the same in every
group, so a group's update is the whole update's restricted to the group: equal, bit for bit, to one
jitted in-memory ``tx.update`` (tested). The in-memory Trainer fuses its update into the step's
program, which XLA:CPU rounds differently in the last bit, so the two runs agree to rounding only. A
non-finite step reads and writes nothing.

Layout: ``offload_dir/g{group}/{leaf}``, one zarr3 array per leaf of the group's optimizer state
(``adamw.init`` of the group's list of parameters: step counts and the two moments). Checkpoints
hold the moments in the usual tree (``to_tree`` / ``load_tree``), so a run resumes across offload
settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
import optax
import tensorstore as ts

from open_r1_jax.config import ConfigError, TrainConfig
from open_r1_jax.training.optim import clip_to, global_norm, optimizer_parts

log = logging.getLogger(__name__)


def check(masked: bool) -> None:
    """What the disk tier cannot do at run time (its settings are checked in config/checks.py)."""
    if masked:
        raise ConfigError(
            "train.offload_dir: not with frozen parameters (LoRA or a stage that freezes weights); their "
            "optimizer state is small: use train.offload: optimizer without offload_dir"
        )
    if jax.process_count() > 1:
        raise ConfigError("train.offload_dir: one process only (each host would need its own shard files)")


def groups(params: dict, group_layers: int) -> list[list[int]]:
    """Indices into ``jax.tree.leaves(params)`` of each group: ``group_layers`` blocks a group, then
    one group of everything outside the blocks (embedding, final norm, LM head); 0: one group."""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if group_layers == 0:
        return [list(range(len(paths)))]
    name = lambda k: getattr(k, "key", getattr(k, "idx", None))  # a dict key or a list index
    by_group: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        g = int(name(path[1])) // group_layers if name(path[0]) == "blocks" and len(path) > 1 else -1
        by_group.setdefault(g, []).append(i)
    return [by_group[g] for g in sorted(k for k in by_group if k >= 0)] + ([by_group[-1]] if -1 in by_group else [])


class DiskMoments:
    """The moments of the optimizer chain ``full`` (``make_optimizer(train_cfg)``) in
    ``train_cfg.offload_dir``, group by group."""

    def __init__(self, full: optax.GradientTransformation, train_cfg: TrainConfig, params):
        self.directory = Path(train_cfg.offload_dir)
        clip, self.rest = optimizer_parts(train_cfg)
        self.max_norm = train_cfg.clip_norm if clip is not None else None
        self.layout = jax.eval_shape(full.init, params)  # the moments' tree as checkpoints hold it
        self.treedef = jax.tree.structure(params)
        leaves = jax.tree.leaves(params)
        self.shardings = [x.sharding for x in leaves]
        self.groups = groups(params, train_cfg.offload_group_layers)
        # per group: the structure of its state and one tensorstore array per leaf
        self.templates = [jax.eval_shape(self.rest.init, [leaves[i] for i in g]) for g in self.groups]
        self.arrays = [
            [self._open(gi, k, x) for k, x in enumerate(jax.tree.leaves(tpl))] for gi, tpl in enumerate(self.templates)
        ]
        self._update = jax.jit(self._group_update)
        self._norm = jax.jit(global_norm)
        self.n_bytes = sum(x.size * x.dtype.itemsize for tpl in self.templates for x in jax.tree.leaves(tpl))
        log.info(
            "optimizer moments on disk: %.1f MB in %d groups under %s",
            self.n_bytes / 1e6,
            len(self.groups),
            self.directory,
        )

    def _open(self, group: int, leaf: int, like):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.directory / f"g{group}" / str(leaf))}}
        return ts.open(
            spec, create=True, delete_existing=True, dtype=ts.dtype(like.dtype.name), shape=like.shape
        ).result()

    def _group_update(self, grads, norm, state, params):
        if self.max_norm is not None:  # the chain's clipping, by the norm of the whole gradient
            grads = clip_to(grads, norm, self.max_norm)
        updates, new_state = self.rest.update(grads, state, params)
        return optax.apply_updates(params, updates), new_state

    # ------------------------------------------------------------------------------------------ io

    def _read(self, group: int) -> list:
        return [a.read() for a in self.arrays[group]]

    def _state(self, group: int, futures: list, place: bool = True):
        """The group's state from its read futures; ``place``: each moment on the device like its
        parameter (else numpy)."""
        values = [f.result() for f in futures]
        tpl = self.templates[group]
        state = jax.tree.unflatten(jax.tree.structure(tpl), values)
        if not place:
            return state
        shardings = [self.shardings[i] for i in self.groups[group]]
        # the moments are lists shaped like the group's parameters: place each like its parameter
        place_list = lambda node: [jax.device_put(v, s) for v, s in zip(node, shardings)]
        return jax.tree.map(lambda node: place_list(node) if _is_list(node) else node, state, is_leaf=_is_list)

    def _write(self, group: int, state) -> list:
        return [a.write(np.asarray(v)) for a, v in zip(self.arrays[group], jax.tree.leaves(state))]

    # ------------------------------------------------------------------------------------------ api

    def init(self, params: dict) -> None:
        """Write the optimizer's initial state (zero moments, step 0), group by group."""
        leaves = jax.tree.leaves(params)
        for gi, g in enumerate(self.groups):
            for f in self._write(gi, self.rest.init([leaves[i] for i in g])):
                f.result()

    def update(self, grads: dict, params: dict, finite) -> dict:
        """One optimizer step on ``grads`` -> the new parameters (the moments on disk are updated);
        with ``finite`` False nothing changes."""
        if not bool(jax.device_get(finite)):
            return params
        norm = self._norm(grads)
        g_leaves, p_leaves = jax.tree.leaves(grads), jax.tree.leaves(params)
        out = list(p_leaves)
        writes: list = []
        pending = self._read(0)
        for gi, g in enumerate(self.groups):
            state = self._state(gi, pending)
            if gi + 1 < len(self.groups):
                pending = self._read(gi + 1)  # the next group's read overlaps this group's update
            new_p, new_state = self._update([g_leaves[i] for i in g], norm, state, [p_leaves[i] for i in g])
            for i, x in zip(g, new_p):
                out[i] = x
            for f in writes:  # at most one group's moments waiting to be written
                f.result()
            writes = self._write(gi, new_state)
        for f in writes:
            f.result()
        return jax.tree.unflatten(self.treedef, out)

    def to_tree(self) -> tuple:
        """The whole optimizer state in the layout of ``full.init(params)`` (what checkpoints hold), as
        numpy arrays."""
        n = len(self.shardings)
        merged = None
        for gi, g in enumerate(self.groups):
            state = self._state(gi, self._read(gi), place=False)
            if merged is None:  # scalars (step counts) from the first group; lists filled below
                merged = jax.tree.map(
                    lambda node: [None] * n if isinstance(node, list) else node, state, is_leaf=_is_list
                )
            for dst, src in zip(_lists(merged), _lists(state)):
                for i, v in zip(g, src):
                    dst[i] = v
        rest = jax.tree.map(
            lambda node: jax.tree.unflatten(self.treedef, node) if _is_list(node) else node, merged, is_leaf=_is_list
        )
        return (*self.layout[:-1], rest)  # the chain's state: the clipping's (empty) before the rest's

    def load_tree(self, opt_state) -> None:
        """Write a checkpoint's optimizer state (the ``full.init(params)`` layout) to disk."""
        rest = opt_state[-1]  # the chain's last state; the clipping's before it is empty
        moments = lambda node: jax.tree.structure(node) == self.treedef
        as_lists = jax.tree.map(lambda node: jax.tree.leaves(node) if moments(node) else node, rest, is_leaf=moments)
        for gi, g in enumerate(self.groups):
            state = jax.tree.map(
                lambda node: [node[i] for i in g] if isinstance(node, list) else node, as_lists, is_leaf=_is_list
            )
            for f in self._write(gi, state):
                f.result()


def _is_list(node) -> bool:
    return isinstance(node, list)


def _lists(tree) -> list[list]:
    """The list nodes (moments) of a group's state, in order."""
    return [x for x in jax.tree.leaves(tree, is_leaf=_is_list) if isinstance(x, list)]
