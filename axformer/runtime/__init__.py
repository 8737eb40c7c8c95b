"""Running a model for predictions: PyTorch or an exported ONNX artifact, one process or several."""

from axformer.runtime.backends import OnnxModel, is_onnx_artifact, load_runnable
from axformer.runtime.predictor import Predictor

__all__ = ["OnnxModel", "Predictor", "is_onnx_artifact", "load_runnable"]
