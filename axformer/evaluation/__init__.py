"""Everything that scores a model on a task, shared by every stage.

``scores``: a model's metrics on the held-out split and the dev set(s) (``axformer evaluate``, the
training loop, the export's validation, the benchmark). ``context``: the model, its task and the
held-out examples that decide (analysis, search, export). ``engine``: the fast candidate evaluator
(prefix cache, early stop) behind significance analysis, the search, mixed precision and recovery.
"""

from axformer.evaluation.scores import Evaluation, SplitResult, evaluate, evaluation_splits, predictions_rows, score

__all__ = ["Evaluation", "SplitResult", "evaluate", "evaluation_splits", "predictions_rows", "score"]
