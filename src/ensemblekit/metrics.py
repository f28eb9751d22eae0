"""Metrics on predicted class probabilities: pure functions of (proba (N, C), labels (N,)).

Every metric takes probabilities, not logits, so a single model, an ensemble average and an MC
dropout average are scored by the same code.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy", "nll", "brier", "ece", "evaluate", "METRICS"]

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
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), torch.ones_like(correct).cpu())
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), confidence.cpu())
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), correct.cpu())
    return ((correct_sum - conf_sum).abs().sum() / max(len(labels), 1)).item()


METRICS = {"accuracy": accuracy, "nll": nll, "brier": brier, "ece": ece}


def evaluate(proba: Tensor, labels: Tensor) -> dict[str, float]:
    """All of `METRICS` for one set of predictions."""
    proba, labels = proba.detach(), labels.detach().to(proba.device)
    return {name: fn(proba, labels) for name, fn in METRICS.items()}
