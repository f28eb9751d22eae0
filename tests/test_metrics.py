"""ensemblekit.metrics against references: scikit-learn where it applies, plain loops and
hand-computed cases otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from ensemblekit import metrics


def _random_case(n: int = 200, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    proba = (torch.randn(n, classes, generator=gen, dtype=torch.float64) * 2).softmax(dim=1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return proba, labels


@pytest.mark.parametrize("seed, classes", [(0, 2), (1, 5), (2, 10)])
def test_accuracy_matches_sklearn(seed, classes):
    proba, labels = _random_case(classes=classes, seed=seed)
    expected = accuracy_score(labels.numpy(), proba.argmax(1).numpy())
    assert metrics.accuracy(proba, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed, classes", [(0, 2), (1, 5), (2, 10)])
def test_nll_matches_sklearn_log_loss(seed, classes):
    proba, labels = _random_case(classes=classes, seed=seed)
    expected = log_loss(labels.numpy(), proba.numpy(), labels=list(range(classes)))
    assert metrics.nll(proba, labels) == pytest.approx(expected, rel=1e-9)
    assert metrics.nll(proba.float(), labels) == pytest.approx(expected, rel=1e-5)


def test_nll_stays_finite_on_a_certain_mistake():
    proba = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert metrics.nll(proba, torch.tensor([1, 0])) == pytest.approx((-math.log(metrics.EPS) + math.log(2)) / 2)


def _brier_loop(proba: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(proba.tolist(), labels.tolist()):
        total += sum((p - (1.0 if c == y else 0.0)) ** 2 for c, p in enumerate(row))
    return total / len(labels)


@pytest.mark.parametrize("seed, classes", [(0, 2), (1, 5), (2, 10)])
def test_brier_matches_a_plain_loop_and_sklearn_multiclass(seed, classes):
    proba, labels = _random_case(classes=classes, seed=seed)
    assert metrics.brier(proba, labels) == pytest.approx(_brier_loop(proba, labels), rel=1e-12)
    # sklearn >= 1.7 scores multi-class Brier; unscaled it is the sum over classes, as here
    expected = brier_score_loss(labels.numpy(), proba.numpy(), labels=list(range(classes)), scale_by_half=False)
    assert metrics.brier(proba, labels) == pytest.approx(expected, rel=1e-9)


def test_binary_brier_is_twice_sklearns_binary_score():
    proba, labels = _random_case(classes=2, seed=3)
    # sklearn's binary score is mean (p_1 - y)^2; the two-class sum counts the same error twice
    expected = brier_score_loss(labels.numpy(), proba[:, 1].numpy())
    assert metrics.brier(proba, labels) == pytest.approx(2 * expected, rel=1e-12)


def test_brier_by_hand():
    proba = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.1^2 + 0.7^2 + 0.6^2) = 0.86 -> mean 0.5
    assert metrics.brier(proba, torch.tensor([0, 1])) == pytest.approx(0.5)
    assert metrics.brier(torch.eye(3), torch.arange(3)) == 0.0


def test_ece_by_hand():
    proba = torch.tensor([[0.05, 0.95], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    labels = torch.tensor([1, 1, 1, 1])
    # 10 bins: (0.9, 1.0] holds a hit and a miss at 0.95 -> |0.5 - 0.95| = 0.45, weight 2/4;
    # (0.6, 0.7] a hit at 0.65 -> 0.35, weight 1/4; (0.5, 0.6] a miss at 0.55 -> 0.55, weight 1/4
    assert metrics.ece(proba, labels, bins=10) == pytest.approx(0.5 * 0.45 + 0.25 * 0.35 + 0.25 * 0.55)
    # one bin: |accuracy - mean confidence| over everything = |0.5 - 0.775|
    assert metrics.ece(proba, labels, bins=1) == pytest.approx(abs(0.5 - 0.775))


def test_ece_is_zero_when_calibrated():
    proba = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    assert metrics.ece(proba, labels) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ece(torch.eye(4), torch.arange(4)) == 0.0  # confidence exactly 1 lands in the last bin


def _ece_loop(proba: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    conf, pred = proba.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(labels)) if lo < conf[i] <= hi]
        if members:
            acc = sum(float(pred[i] == labels[i]) for i in members) / len(members)
            mean_conf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / len(labels) * abs(acc - mean_conf)
    return total


@pytest.mark.parametrize("bins", [1, 5, 15])
def test_ece_matches_a_plain_loop(bins):
    proba, labels = _random_case(n=300, classes=4, seed=bins)
    assert metrics.ece(proba, labels, bins=bins) == pytest.approx(_ece_loop(proba, labels, bins), abs=1e-12)


def test_evaluate_returns_every_metric():
    proba, labels = _random_case()
    result = metrics.evaluate(proba.float().requires_grad_(), labels)
    assert set(result) == {"accuracy", "nll", "brier", "ece"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["nll"] == pytest.approx(metrics.nll(proba, labels), rel=1e-5)


def test_bad_shapes_and_bins_are_value_errors():
    proba, labels = _random_case(n=10)
    with pytest.raises(ValueError, match="expected proba"):
        metrics.accuracy(proba, labels[:5])
    with pytest.raises(ValueError, match="expected proba"):
        metrics.nll(proba[0], labels)
    with pytest.raises(ValueError, match="bins"):
        metrics.ece(proba, labels, bins=0)
