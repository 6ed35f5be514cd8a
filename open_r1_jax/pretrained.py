"""``open_r1_jax.load_pretrained(path)``: trained weights as a callable JAX model.

``path`` is a run directory (its latest checkpoint, or ``step``), a ``checkpoints/<step>`` folder, or a
model folder (``config.json`` + safetensors): an export (``python -m open_r1_jax.export``), a
transformers Llama or Mixtral checkpoint, or a ``torch_ref`` state_dict written by PyTorch.
Only the model item of a checkpoint is read (no optimizer).

    model = load_pretrained("runs/tiny")
    logits = model(tokens)            # tokens [B,T] int -> logits [B,T,V] fp32
    module = model.module()           # the nnx Transformer, e.g. for aux outputs
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import ModelConfig


class PretrainedModel:
    """Weights (``params``, ``model_state``: router biases) and the model config they belong to."""

    def __init__(self, config: ModelConfig, params: dict, model_state: dict, source: str, step: int | None = None):
        from open_r1_jax.model import build_model, merge_model

        self.config, self.params, self.model_state, self.source, self.step = config, params, model_state, source, step
        self.graphdef = nnx.split(nnx.eval_shape(lambda: build_model(config, 0)), nnx.Param, ...)[0]
        graphdef = self.graphdef

        def forward(params, model_state, tokens, positions, segment_ids):
            return merge_model(graphdef, params, model_state)(tokens, positions, segment_ids)[0]

        self._forward = jax.jit(forward)

    def __call__(self, tokens, positions=None, segment_ids=None) -> jax.Array:
        """tokens [B,T] int (positions/segment_ids [B,T] for packed rows) -> logits [B,T,V] fp32."""
        return self._forward(self.params, self.model_state, jnp.asarray(tokens), positions, segment_ids)

    def module(self):
        """The nnx ``Transformer`` holding these weights (its call also returns the MoE aux outputs)."""
        from open_r1_jax.model import merge_model

        return merge_model(self.graphdef, self.params, self.model_state)

    def __repr__(self) -> str:
        n = sum(x.size for x in jax.tree.leaves(self.params))
        return f"PretrainedModel({self.source!r}, step={self.step}, {n / 1e6:.2f}M parameters)"


def load_pretrained(path: str | Path, step: int | None = None) -> PretrainedModel:
    """Run directory / checkpoint folder / exported directory -> PretrainedModel (weights on one device)."""
    from open_r1_jax.checkpoint import model_config, read_weights
    from open_r1_jax.export import read_model_weights

    path = Path(path)
    if (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
        if step is not None:
            raise ValueError(f"{path} is a model folder (one set of weights); step={step} does not apply")
        section, weights = read_model_weights(path)
        return PretrainedModel(model_config(section), weights["params"], weights["model_state"], str(path))
    config, weights, where, step = read_weights(path, step)
    return PretrainedModel(model_config(config), weights["params"], weights["model_state"], str(where), step)
