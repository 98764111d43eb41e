"""scikit-learn estimators that train with QAT and pruning and predict in FHE."""
from .estimators import NeuralNetClassifier, NeuralNetRegressor, load
from .float_twin import FloatMLP, FloatNeuralNetClassifier, FloatNeuralNetRegressor
from .qat_module import QATMLP

__all__ = [
    "FloatMLP",
    "FloatNeuralNetClassifier",
    "FloatNeuralNetRegressor",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "QATMLP",
    "load",
]
