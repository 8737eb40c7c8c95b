"""Knowledge distillation (FastFormers): losses, students derived from the teacher, the trainer, and the recipe."""

from axformer.distill.objective import DistillConfig
from axformer.distill.trainer import distill

__all__ = ["DistillConfig", "distill"]
