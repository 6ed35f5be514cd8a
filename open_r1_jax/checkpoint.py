"""Orbax checkpoints of a run: sharded, asynchronous, restorable onto any mesh.

Layout of ``run.dir/checkpoints/<step>/`` (one orbax ``CheckpointManager`` step, one folder per item):

    model/      {"params", "model_state"}: fp32 parameters and the router biases (all that inference needs)
    optimizer/  the optax state (AdamW moments, counters)
    train/      the other entries of the train state: step, loss_scale, good_steps, skipped, nonfinite_step
    data/       the grain iterator state (a small JSON dict: where the data stream stopped)
    config/     the resolved config (``open_r1_jax.config.to_dict``), so the model can be rebuilt from here
    counters/   the run's host counters (tokens_seen, train_seconds, wall_seconds): a resumed run goes on
                counting from them

Randomness: the model has no dropout and the step draws no random numbers, so the train state holds no
RNG key. Parameters are seeded by ``train.seed`` at initialisation (then read from checkpoints), and the
data order by ``train.seed`` plus the saved iterator state: these two make a resumed run continue bitwise.

Saving is asynchronous: ``save`` returns once the arrays are copied to host memory and the write
continues in the background (the next ``save`` or ``close`` waits for it). Orbax writes into
``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` when complete (files fsync'ed), so a process
killed mid-save leaves the previous step as the latest; a writable ``Checkpointer`` deletes such
leftovers when it opens the directory. ``keep`` (``train.keep_checkpoints``) bounds the steps kept.
A state whose ``nonfinite_step`` is set (a NaN/inf loss or gradient) is refused.

Restoring takes a target tree (arrays, or ``jax.ShapeDtypeStruct`` with a sharding): the checkpoint is
read straight into that placement, whatever mesh wrote it. ``restore_params`` reads only ``model/``.
A target whose parameter paths or shapes differ from the checkpoint raises ``CheckpointMismatch``
naming the first differing paths. A checkpoint with only ``model/`` and ``config/`` (written by
``python -m open_r1_jax.export --from-torch``) restores into a fresh optimizer state: fine-tuning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from open_r1_jax.model import lora

log = logging.getLogger("open_r1_jax")

MODEL_KEYS = ("params", "model_state")  # the "model" item
OPT_KEY = "opt_state"  # the "optimizer" item; every other key of the state goes to the "train" item


class CheckpointMismatch(ValueError):
    """The checkpoint's parameters do not have the paths or shapes of the model restoring it."""


class NonFiniteState(ValueError):
    """A save was asked for a state whose loss or gradients went non-finite."""


class Checkpointer:
    """Orbax manager over ``directory`` (``run.dir/checkpoints``).

    ``read_only=True`` (export, evaluation) creates nothing and never deletes a ``*.orbax-checkpoint-tmp*``
    folder, which may be the save in flight of a run that is still training.
    """

    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no checkpoint directory")
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        if read_only:  # orbax warns that a read-only manager will not save: that is the point
            absl_log.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep,
                create=not read_only,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
            )
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    "model": ocp.StandardCheckpointHandler(),
                    "optimizer": ocp.StandardCheckpointHandler(),
                    "train": ocp.StandardCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(),
                    "counters": ocp.JsonCheckpointHandler(),
                },
            )
        finally:
            absl_log.setLevel(level)

    # ------------------------------------------------------------------------------------------ steps

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def resolve_step(self, step: int | None) -> int:
        """``step`` if it is a complete checkpoint, the latest one for None; else FileNotFoundError."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint of step {step}; available: {steps}")
        return step

    def items(self, step: int) -> set[str]:
        return {p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()}

    # ------------------------------------------------------------------------------------------ save

    def save(
        self, step: int, state: dict, data_iter=None, config: dict | None = None, counters: dict | None = None
    ) -> None:
        """Start an asynchronous save of ``state`` (the train-state dict) at ``step``.

        Blocks only for the device-to-host copy, and for the previous save if it is still writing.
        """
        bad = int(jax.device_get(state.get("nonfinite_step", -1)))
        if bad >= 0:
            raise NonFiniteState(
                f"refusing to checkpoint step {step}: the loss or gradients became non-finite at step {bad + 1}"
            )
        model = {k: state[k] for k in MODEL_KEYS}
        rest = {k: v for k, v in state.items() if k not in MODEL_KEYS and k != OPT_KEY}
        items = {
            "model": ocp.args.StandardSave(model),
            "optimizer": ocp.args.StandardSave(state[OPT_KEY]),
            "train": ocp.args.StandardSave(rest),
            "config": ocp.args.JsonSave(config or {}),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if counters is not None:
            items["counters"] = ocp.args.JsonSave(counters)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def save_params(self, step: int, params: dict, model_state: dict, config: dict) -> None:
        """A checkpoint of the model alone (no optimizer, train or data items)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave({"params": params, "model_state": model_state}),
                config=ocp.args.JsonSave(config),
            ),
        )

    # ------------------------------------------------------------------------------------------ restore

    def restore(self, step: int, like: dict, data_iter=None) -> dict:
        """The train state of ``step``, placed like ``like`` (arrays or ShapeDtypeStructs with shardings).

        ``data_iter`` (a grain iterator) is moved to where the data stream stopped. A params-only
        checkpoint keeps ``like``'s optimizer and train entries, which must then be arrays.
        """
        have = self.items(step)
        target = abstract(like)
        model_like = {k: target[k] for k in MODEL_KEYS}
        self._check(step, model_like)
        args = {"model": ocp.args.StandardRestore(model_like)}
        full = "optimizer" in have
        rest = {k: v for k, v in target.items() if k not in MODEL_KEYS and k != OPT_KEY}
        if full:
            args["optimizer"] = ocp.args.StandardRestore(target[OPT_KEY])
            args["train"] = ocp.args.StandardRestore(rest)
        elif any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves({k: like[k] for k in rest})):
            raise ValueError(
                f"{self.directory / str(step)} holds parameters only: pass a state of arrays, "
                "whose optimizer state starts fresh"
            )
        if data_iter is not None and "data" in have:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        state = dict(like)
        state.update(out["model"])
        if full:
            state[OPT_KEY] = out["optimizer"]
            state.update(out["train"])
        else:
            log.info("checkpoint %d holds parameters only: optimizer and data start fresh", step)
        return state

    def restore_params(self, step: int | None = None, like: dict | None = None, sharding=None) -> dict:
        """``{"params", "model_state"}`` of ``step`` (default: the latest); reads only the ``model`` item.

        ``like``: a ``{"params", "model_state"}`` target (arrays or ShapeDtypeStructs). Without it the
        model is rebuilt (abstractly) from the checkpoint's config and placed by ``sharding`` (default:
        the first local device).
        """
        step = self.resolve_step(step)
        if like is None:
            like = abstract_model(self.config(step), sharding)
        target = abstract(like)
        self._check(step, target)
        out = self.manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
        return out["model"]

    def counters(self, step: int) -> dict:
        """The host counters saved with ``step`` ({} for a checkpoint written without them)."""
        if "counters" not in self.items(step):
            return {}
        return self.manager.restore(step, args=ocp.args.Composite(counters=ocp.args.JsonRestore()))["counters"]

    def config(self, step: int | None = None) -> dict:
        """The resolved config saved with ``step`` (default: the latest)."""
        step = self.resolve_step(step)
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def _check(self, step: int, model_like: dict) -> None:
        """Raise CheckpointMismatch when parameter paths or shapes differ from the checkpoint's."""
        meta = self.manager.item_metadata(step)["model"]
        tree = getattr(meta, "tree", meta)
        saved = _shapes(tree)
        wanted = _shapes(model_like)
        problems = [
            f"{p}: checkpoint {saved[p]} vs model {wanted[p]}" for p in saved if p in wanted and saved[p] != wanted[p]
        ]
        problems += [f"{p}: in the checkpoint {saved[p]}, not in the model" for p in saved if p not in wanted]
        problems += [f"{p}: in the model {wanted[p]}, not in the checkpoint" for p in wanted if p not in saved]
        if problems:
            raise CheckpointMismatch(
                f"{self.directory / str(step)} does not fit this model ({len(problems)} differing parameter(s)); "
                "first: " + "; ".join(problems[:8]) + ". Restore it with the model config it was saved with "
                "(its config/ item)."
            )

    # ------------------------------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | Path, step: int | None = None) -> tuple[Checkpointer, int]:
    """A read-only Checkpointer and step for a run directory, its ``checkpoints/`` folder or one
    ``checkpoints/<step>`` folder (``step`` picks one in the first two; default: the latest)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    elif path.name.isdigit() and (path / "model").is_dir():
        if step is not None and step != int(path.name):
            raise ValueError(f"{path} is the checkpoint of step {path.name}, not of step {step}")
        path, step = path.parent, int(path.name)
    elif not path.is_dir() or not any(p.name.isdigit() for p in path.iterdir()):
        raise FileNotFoundError(
            f"{path}: not a run directory (with checkpoints/), a checkpoints/ folder or a checkpoints/<step> folder"
        )
    ckpt = Checkpointer(path, read_only=True)
    return ckpt, ckpt.resolve_step(step)


def read_weights(path: str | Path, step: int | None = None, adapters: str = "merge") -> tuple[dict, dict, Path, int]:
    """Params-only read of a run / checkpoints folder / step folder -> (config dict, {"params",
    "model_state"}, the step's folder, step). Reads no optimizer state.

    LoRA runs (``model/lora.py``): ``adapters="merge"`` folds the adapters into the base (the run's
    model, what export / eval / generate use), ``"drop"`` returns the base alone, ``"keep"`` the
    params as saved (``params["lora"]`` beside the base)."""
    if adapters not in ("merge", "drop", "keep"):
        raise ValueError(f"adapters: got {adapters!r}; accepted: merge, drop, keep")
    ckpt, step = open_checkpoint(path, step)
    with ckpt:
        config, weights = ckpt.config(step), ckpt.restore_params(step)
    params = weights["params"]
    if adapters == "merge":
        params = lora.merge(params, config)
    elif adapters == "drop":
        params = {k: v for k, v in params.items() if k != lora.KEY}
    return config, {**weights, "params": params}, ckpt.directory / str(step), step


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/blocks/0/attn/wq": shape} for every array leaf (array, ShapeDtypeStruct or orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(_key(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def abstract(tree: Any) -> Any:
    """ShapeDtypeStruct target (keeping each array's sharding) for a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def model_config(d: dict):
    """``ModelConfig`` from a resolved config dict (its "model" section is used) or a model section."""
    from open_r1_jax import config as config_lib

    return config_lib.model_from_dict(d["model"] if isinstance(d.get("model"), dict) else d)


def abstract_model(model_cfg: dict, sharding=None) -> dict:
    """``{"params", "model_state"}`` of ShapeDtypeStructs for a config dict, built without allocating."""
    from open_r1_jax.model import build_model, split_model

    cfg = model_config(model_cfg)
    params, model_state = jax.eval_shape(lambda: split_model(build_model(cfg, 0))[1:])
    if int((model_cfg.get("lora") or {}).get("rank", 0)):  # a LoRA run's checkpoint also holds its adapters
        from open_r1_jax.config import lora_from_dict

        lo = lora_from_dict(model_cfg["lora"])
        paths = lora.target_paths(cfg, lo)
        params = {**params, lora.KEY: jax.eval_shape(lambda: lora.init(params, paths, lo.rank, jax.random.key(0)))}
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        {"params": params, "model_state": model_state},
    )
