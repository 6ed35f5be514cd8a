"""Training stages: each one small file; ``train.stage`` picks one by name (see ``base.Stage``)."""

from open_r1_jax.training.stages.base import Stage, StageContext
from open_r1_jax.training.stages.distill import Distill
from open_r1_jax.training.stages.dpo import DPO
from open_r1_jax.training.stages.grpo import GRPO
from open_r1_jax.training.stages.pretrain import Pretrain
from open_r1_jax.training.stages.sft import SFT

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (Pretrain, SFT, DPO, Distill, GRPO)}

__all__ = ["DPO", "GRPO", "Distill", "SFT", "STAGES", "Pretrain", "Stage", "StageContext"]
