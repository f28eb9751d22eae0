"""ensemblekit: turn one network into many and many back into one prediction."""

__version__ = "0.1.0"

from .data import DATASETS, Batches, DataError, Split, Splits, load  # noqa: E402
from .metrics import evaluate  # noqa: E402
from .models import MLP, SmallCNN, build_model  # noqa: E402
from .train import History, Recipe, TrainingError, fit, predict_proba  # noqa: E402
from .siamese import PairBatches, PairModel, SiameseEncoder, contrastive_loss  # noqa: E402
from .averaging import EMA, SWA, recompute_batchnorm  # noqa: E402
from .snapshots import train_snapshot_ensemble  # noqa: E402
from .occlusion import Cutout, RandomErasing, occlusion_robustness, occlusion_sensitivity  # noqa: E402
from .dropout import InvertedDropout, VanillaDropout  # noqa: E402
from .mc_dropout import MCDropout  # noqa: E402
from .dropout_exact import exact_ensemble  # noqa: E402
from .ensemble import Ensemble, evaluate_members, fit_weights, train_members  # noqa: E402
from .checkpoint import CheckpointError, load_ensemble, save_ensemble  # noqa: E402

__all__ = [
    "__version__",
    "DATASETS", "Batches", "DataError", "Split", "Splits", "load",
    "evaluate",
    "MLP", "SmallCNN", "build_model",
    "History", "Recipe", "TrainingError", "fit", "predict_proba",
    "PairBatches", "PairModel", "SiameseEncoder", "contrastive_loss",
    "EMA", "SWA", "recompute_batchnorm", "train_snapshot_ensemble",
    "Cutout", "RandomErasing", "occlusion_robustness", "occlusion_sensitivity",
    "InvertedDropout", "VanillaDropout", "MCDropout", "exact_ensemble",
    "Ensemble", "evaluate_members", "fit_weights", "train_members",
    "CheckpointError", "load_ensemble", "save_ensemble",
]
