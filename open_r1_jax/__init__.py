"""open-r1-jax: a JAX/Flax reimplementation of the Open-R1 training stack."""

from open_r1_jax.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "load_pretrained"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: ``import open_r1_jax`` stays light (no jax, flax or orbax)
    if name == "load_pretrained":
        from open_r1_jax.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'open_r1_jax' has no attribute {name!r}")
