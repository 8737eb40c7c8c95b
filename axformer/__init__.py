"""axformer: accuracy-driven approximation of fine-tuned Transformer encoders.

The Python API mirrors the CLI: every subcommand is one of these functions.
"""

from axformer.distill import DistillConfig
from axformer.distill.ladder import StudentRung
from axformer.distill.recipe import RecipeConfig, fastformers_recipe
from axformer.errors import AxformerError
from axformer.evaluation import Evaluation, evaluate
from axformer.models import auto as _auto  # noqa: F401  (registers axformer-pruned with transformers' Auto classes)
from axformer.models.loading import load_model, load_tokenizer, save_model
from axformer.search.config import AttentionSearch, AxFormerRule, OptimizeConfig, Recovery, Tolerance
from axformer.search.optimize import optimize
from axformer.tasks.data import Split, TaskData
from axformer.tasks.selection import TaskSelection
from axformer.tasks.sources import load_custom, load_task
from axformer.tasks.spec import TaskSpec, get_task
from axformer.training.finetune import FinetuneConfig, FinetuneResult, finetune

__version__ = "0.1.0"

__all__ = [
    "AxformerError",
    "DistillConfig",
    "OptimizeConfig",
    "Tolerance",
    "AxFormerRule",
    "AttentionSearch",
    "Recovery",
    "TaskSelection",
    "RecipeConfig",
    "StudentRung",
    "Evaluation",
    "FinetuneConfig",
    "FinetuneResult",
    "Split",
    "TaskData",
    "TaskSpec",
    "evaluate",
    "fastformers_recipe",
    "finetune",
    "get_task",
    "load_custom",
    "load_model",
    "load_task",
    "load_tokenizer",
    "optimize",
    "save_model",
]
