"""ensemblekit: turn one network into many and many back into one prediction."""

__version__ = "0.1.0"

from .data import DATASETS, Batches, DataError, Split, Splits, load  # noqa: E402
from .metrics import evaluate  # noqa: E402
from .models import MLP, SmallCNN, build_model  # noqa: E402
from .train import History, Recipe, TrainingError, fit, predict_proba  # noqa: E402

__all__ = [
    "__version__",
    "DATASETS", "Batches", "DataError", "Split", "Splits", "load",
    "evaluate",
    "MLP", "SmallCNN", "build_model",
    "History", "Recipe", "TrainingError", "fit", "predict_proba",
]
