"""Plain-PyTorch fp32 reference of the open_r1_jax model (no jax/flax import), for parity tests."""

from torch_ref import losses
from torch_ref.config import TorchModelConfig
from torch_ref.lsh_attention import MASK_VALUE
from torch_ref.model import Transformer
from torch_ref.pretrained import load_pretrained

__all__ = ["MASK_VALUE", "TorchModelConfig", "Transformer", "load_pretrained", "losses"]
