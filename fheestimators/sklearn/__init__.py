"""scikit-learn estimators that train with QAT and pruning and predict in FHE."""
from .estimators import NeuralNetClassifier, NeuralNetRegressor, load
from .float_twin import FloatMLP, FloatNeuralNetClassifier, FloatNeuralNetRegressor
from .qat_module import QATMLP
from .scoring import best_within_latency, latency_scorer, make_simulate_scorer

__all__ = [
    "FloatMLP",
    "FloatNeuralNetClassifier",
    "FloatNeuralNetRegressor",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "QATMLP",
    "best_within_latency",
    "latency_scorer",
    "load",
    "make_simulate_scorer",
]
