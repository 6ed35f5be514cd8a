"""open-r1-jax: a JAX/Flax reimplementation of the Open-R1 training stack."""
from open_r1_jax.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
