"""Orbax checkpoints of a run: train state, grain iterator state and the resolved config.

Layout: ``run.dir/checkpoints/<step>/{state,data,config}``. Saves are asynchronous (the loop waits
only for the device-to-host copy); orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames on
success, so an interrupted save never replaces the last complete checkpoint, and leftovers are
cleaned at the next start. Restores take an abstract target (shapes, dtypes, shardings), so a
checkpoint restores onto whatever placement the target names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, config: dict | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config or {})}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(tree: Any) -> Any:
    """ShapeDtypeStruct target (keeping each array's sharding) for a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
