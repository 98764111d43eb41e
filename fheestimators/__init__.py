"""fheestimators: neural networks trained with scikit-learn's API, run on encrypted data.

The public names load on first use (PEP 562), so that a process which only deploys a
saved model (``fheestimators serve``, a client) does not import torch, Brevitas and skorch.
"""
import warnings
from typing import TYPE_CHECKING

# Notices of third-party imports that users cannot act on, matched by message and module.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning, module="concrete")
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found", category=UserWarning,
                        module="brevitas")

from . import fhe  # noqa: E402  (first: a process that runs a circuit keeps its exit status)
from ._lazy import lazy_names  # noqa: E402

_PUBLIC = {
    "DebugArtifacts": ".fhe.artifacts",
    "NeuralNetClassifier": ".sklearn",
    "NeuralNetRegressor": ".sklearn",
    "FheCost": ".fhe.cost",
    "QuantizedModule": ".quantization.module",
    "best_within_latency": ".sklearn",
    "build_quantized_module": ".torch.compile",
    "compile_brevitas_qat_model": ".torch.compile",
    "compile_onnx_model": ".torch.compile",
    "compile_torch_model": ".torch.compile",
    "latency_scorer": ".sklearn",
    "load": ".sklearn",
    "make_checkerboard": ".datasets",
    "make_simulate_scorer": ".sklearn",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what static tools (type checkers, the API docs) read
    from .datasets import make_checkerboard
    from .fhe.artifacts import DebugArtifacts
    from .fhe.cost import FheCost
    from .quantization.module import QuantizedModule
    from .sklearn import (
        NeuralNetClassifier,
        NeuralNetRegressor,
        best_within_latency,
        latency_scorer,
        load,
        make_simulate_scorer,
    )
    from .torch.compile import (
        build_quantized_module,
        compile_brevitas_qat_model,
        compile_onnx_model,
        compile_torch_model,
    )


__getattr__, __dir__ = lazy_names(__name__, _PUBLIC, globals())
