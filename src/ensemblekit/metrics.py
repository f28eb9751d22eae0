"""Metrics on predicted class probabilities: pure functions of (proba (N, C), labels (N,)).

Every metric takes probabilities, not logits, so a single model, an ensemble average and an MC
dropout average are scored by the same code.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy", "nll", "brier", "ece", "evaluate", "METRICS", "roc_curve", "equal_error_rate", "roc_auc"]

EPS = 1e-12  # probabilities are clamped here before the log, so one confident mistake stays finite


def _check(proba: Tensor, labels: Tensor) -> None:
    if proba.ndim != 2 or labels.ndim != 1 or proba.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected proba (N, C) and labels (N,), got {tuple(proba.shape)} and {tuple(labels.shape)}"
        )


def accuracy(proba: Tensor, labels: Tensor) -> float:
    """Fraction of argmax predictions equal to the label."""
    _check(proba, labels)
    return (proba.argmax(dim=1) == labels).double().mean().item()


def nll(proba: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    _check(proba, labels)
    p_true = proba.double().gather(1, labels.view(-1, 1)).squeeze(1)
    return (-p_true.clamp_min(EPS).log()).mean().item()


def brier(proba: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean over samples of sum_c (p_c - [c == y])^2 (Brier 1950), in [0, 2]."""
    _check(proba, labels)
    onehot = torch.nn.functional.one_hot(labels, proba.shape[1]).double()
    return (proba.double() - onehot).pow(2).sum(dim=1).mean().item()


def ece(proba: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins (Guo et al. 2017).

    sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|, confidence = max probability; bin b
    holds confidences in (b/bins, (b+1)/bins].
    """
    _check(proba, labels)
    if bins < 1:
        raise ValueError(f"bins={bins}: need at least 1 bin")
    confidence, predicted = proba.double().max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # (N,) bin index
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), confidence.cpu())
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), correct.cpu())
    return ((correct_sum - conf_sum).abs().sum() / max(len(labels), 1)).item()


def roc_curve(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(false positive rate, true positive rate, thresholds) of "positive iff score >= t", via
    `sklearn.metrics.roc_curve`; ``positive`` (N,) is 1/True for the positive class."""
    from sklearn.metrics import roc_curve as _roc_curve

    fpr, tpr, thresholds = _roc_curve(positive.detach().cpu().numpy().astype(bool), scores.detach().double().cpu().numpy())
    return torch.from_numpy(fpr), torch.from_numpy(tpr), torch.from_numpy(thresholds)


def equal_error_rate(scores: Tensor, positive: Tensor) -> float:
    """The error rate where false accepts equal false rejects (FPR = 1 - TPR) on the ROC curve.

    Between the two ROC points where FPR - (1 - TPR) changes sign the crossing is linearly
    interpolated, so the value does not depend on how finely the thresholds fall.
    """
    fpr, tpr, _ = roc_curve(scores, positive)
    fnr = 1 - tpr
    gap = fpr - fnr  # rises from -1 (threshold above all scores) to +1
    k = int(torch.nonzero(gap >= 0)[0])
    if k == 0 or gap[k] == 0:
        return float((fpr[k] + fnr[k]) / 2)
    w = -gap[k - 1] / (gap[k] - gap[k - 1])  # fraction of the way from point k-1 to k
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def roc_auc(scores: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of "positive iff score >= t" (`sklearn.metrics.roc_auc_score`):
    the probability that a random positive scores above a random negative (ties count half).
    ``positives`` (N,) is 1/True for the positive class; both classes must occur."""
    from sklearn.metrics import roc_auc_score

    positives = positives.detach().cpu().numpy().astype(bool)
    if positives.all() or not positives.any():
        raise ValueError(f"roc_auc needs both classes; got {int(positives.sum())} positives out of {positives.size}")
    return float(roc_auc_score(positives, scores.detach().double().cpu().numpy()))


METRICS = {"accuracy": accuracy, "nll": nll, "brier": brier, "ece": ece}


def evaluate(proba: Tensor, labels: Tensor) -> dict[str, float]:
    """All of `METRICS` for one set of predictions."""
    proba, labels = proba.detach(), labels.detach().to(proba.device)
    return {name: fn(proba, labels) for name, fn in METRICS.items()}
