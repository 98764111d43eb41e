"""fheestimators: neural networks trained with scikit-learn's API, run on encrypted data."""
from .fhe.artifacts import DebugArtifacts
from .datasets import make_checkerboard
from .quantization.module import QuantizedModule
from .sklearn import NeuralNetClassifier, NeuralNetRegressor, load
from .torch.compile import (
    build_quantized_module,
    compile_brevitas_qat_model,
    compile_onnx_model,
    compile_torch_model,
)

__all__ = [
    "DebugArtifacts",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "QuantizedModule",
    "build_quantized_module",
    "compile_brevitas_qat_model",
    "compile_onnx_model",
    "compile_torch_model",
    "load",
    "make_checkerboard",
]
