"""scikit-learn estimators that train with QAT and pruning and predict in FHE."""
from .estimators import NeuralNetClassifier, NeuralNetRegressor
from .qat_module import QATMLP

__all__ = ["NeuralNetClassifier", "NeuralNetRegressor", "QATMLP"]
