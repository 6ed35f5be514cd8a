"""Plain-PyTorch fp32 reference of the open_r1_jax model (no jax/flax import), for parity tests."""

from torch_ref import losses
from torch_ref.model import MASK_VALUE, TorchModelConfig, Transformer
from torch_ref.pretrained import load_pretrained

__all__ = ["MASK_VALUE", "TorchModelConfig", "Transformer", "load_pretrained", "losses"]
