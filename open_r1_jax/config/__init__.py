"""The configuration tree: frozen dataclasses, YAML overrides, dotted CLI overrides.

Defaults live in code; a YAML file holds only what differs from them; ``key.sub=value`` on the
command line overrides both. Every mistake raises one ``ConfigError`` that names the key and what
would be accepted. Each layer of the model receives only its own sub-config.

    model.py   what a model is: ModelConfig and its sections (MoE, DRN, attention, vision, audio)
    run.py     data, the training loop and its stages, the mesh, the run folder; Config, the root
    loader.py  defaults <- YAML <- overrides, each value checked against its annotation; to_dict, replace
    checks.py  impossible combinations (validate) and the keys a chosen path ignores (ignored_keys)
"""

from __future__ import annotations

from open_r1_jax.config.loader import (  # noqa: F401
    ConfigError,
    build_section,
    dump_yaml,
    from_dict,
    load_config,
    lora_from_dict,
    model_from_dict,
    parse_overrides,
    replace,
    to_dict,
)
from open_r1_jax.config.model import (  # noqa: F401
    MODEL_RUNTIME_KEYS,
    AttentionConfig,
    AudioConfig,
    DRNConfig,
    ModelConfig,
    MoEConfig,
    VisionConfig,
)
from open_r1_jax.config.run import (  # noqa: F401
    CleanConfig,
    Config,
    DataConfig,
    DistillConfig,
    DPOConfig,
    GRPOConfig,
    LoRAConfig,
    MeshConfig,
    RunConfig,
    SFTConfig,
    TrainConfig,
)
