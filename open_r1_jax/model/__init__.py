"""The "sandwich" decoder in Flax NNX: DRN blocks at the bottom, sparse MoE blocks above."""

from open_r1_jax.model.functional import merge_model, split_model
from open_r1_jax.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model", "merge_model", "split_model"]
