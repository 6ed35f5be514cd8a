"""The model as pure functions of weight dicts: what jitted steps, checkpoints and export pass around.

``split_model`` turns an nnx module into (graphdef, params, model_state), where ``params`` are the
trained ``nnx.Param`` leaves and ``model_state`` everything else (the DeepSeek-V3 router biases), both
as nested pure dicts (they save and restore without nnx's ``.value`` wrappers). ``merge_model``
rebuilds the module from them inside a traced function.
"""

from __future__ import annotations

from typing import Any

from flax import nnx


def split_model(model) -> tuple[Any, dict, dict]:
    """nnx module -> (graphdef, params, model_state) as pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_model(graphdef, params: dict, model_state: dict):
    """The inverse of ``split_model``: a module whose weights are ``params`` and ``model_state``."""
    return nnx.merge(graphdef, nnx.State(params), nnx.State(model_state))
