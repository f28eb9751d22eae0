"""Exact mask enumeration against brute force (itertools over every mask, the layer's own forward),
the lecture's closed form, and the known result that weight scaling is the normalised geometric
mean when only a linear layer and a softmax follow the dropout."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from ensemblekit.dropout import InvertedDropout, VanillaDropout, inverted_dropout, vanilla_dropout
from ensemblekit.dropout_exact import (
    enumerate_masks, ensemble_gaps, exact_ensemble, exact_expectation, split_at_dropout, two_input_example,
    weight_scaling,
)
from ensemblekit.mc_dropout import MCDropout
from ensemblekit.models import MLP


@pytest.mark.parametrize("keep", [0.5, 0.8, 1.0])
def test_enumerate_masks_lists_every_mask_once_with_its_probability(keep):
    masks, probs = enumerate_masks(5, keep)
    assert masks.shape == (32, 5) and len({tuple(m.tolist()) for m in masks}) == 32
    assert probs.sum().item() == pytest.approx(1.0)
    for m, p in zip(masks, probs):
        k = int(m.sum())
        assert p.item() == pytest.approx(keep**k * (1 - keep) ** (5 - k))


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_two_input_example_matches_brute_force_and_closed_form(keep):
    w0, w1, x, y = 0.7, -1.3, 2.0, 0.5
    brute = sum(
        (keep if m0 else 1 - keep) * (keep if m1 else 1 - keep) * (w0 * x * m0 + w1 * y * m1)
        for m0, m1 in itertools.product([0, 1], repeat=2)
    )
    result = two_input_example(w0, w1, x, y, keep)
    assert result["expected"] == pytest.approx(brute, abs=1e-12)
    assert result["closed_form"] == pytest.approx(keep * (w0 * x + w1 * y), abs=1e-12)
    assert result["expected"] == pytest.approx(result["closed_form"], abs=1e-12)
    assert sum(m["probability"] for m in result["members"]) == pytest.approx(1.0)
    # inverted dropout divides by keep: the expectation is the undropped unit
    h, w = torch.tensor([[x, y]], dtype=torch.float64), torch.tensor([w0, w1], dtype=torch.float64)
    inverted = exact_expectation(lambda v: v @ w, h, keep, rule=inverted_dropout).item()
    assert inverted == pytest.approx(w0 * x + w1 * y, abs=1e-12)


def brute_force_ensemble(layer, tail, h):
    """Every mask through the layer's own training forward (masks injected), weighted by P(mask)."""
    n = h.shape[1]
    layer.train()
    arith = torch.zeros(h.shape[0], 3, dtype=torch.float64)
    log_geo = torch.zeros_like(arith)
    for bits in itertools.product([0.0, 1.0], repeat=n):
        mask = torch.tensor(bits, dtype=h.dtype)
        p = layer.keep ** int(mask.sum()) * (1 - layer.keep) ** (n - int(mask.sum()))
        layer.mask_sampler = lambda shape, like, mask=mask: mask.expand(shape)
        log_p = tail(layer(h)).log_softmax(dim=1).double()
        arith += p * log_p.exp()
        log_geo += p * log_p
    layer.mask_sampler = None
    return arith, log_geo.softmax(dim=1)


@pytest.mark.parametrize("cls", [VanillaDropout, InvertedDropout])
def test_exact_ensemble_matches_brute_force_through_a_nonlinear_tail(cls):
    torch.manual_seed(0)
    layer = cls(keep=0.6)
    tail = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    h = torch.randn(4, 5, dtype=torch.float64).relu() + 0.1
    arith, geo = brute_force_ensemble(layer, tail, h)
    exact = exact_ensemble(tail, h, layer.keep, rule=layer.function, max_rows=12)  # chunked: 3 masks/chunk
    assert torch.allclose(exact.arithmetic, arith, atol=1e-12)
    assert torch.allclose(exact.geometric, geo, atol=1e-12)
    # through a ReLU neither mean is the one-pass weight scaling
    ws = weight_scaling(tail, h, layer.keep, rule=layer.function)
    assert (ws - exact.arithmetic).abs().max() > 1e-3 and (ws - exact.geometric).abs().max() > 1e-3


@pytest.mark.parametrize("rule", [vanilla_dropout, inverted_dropout])
def test_weight_scaling_is_the_geometric_mean_for_a_linear_softmax_tail(rule):
    torch.manual_seed(1)
    tail = nn.Linear(8, 4).double()
    h = torch.randn(6, 8, dtype=torch.float64)
    exact = exact_ensemble(tail, h, 0.7, rule=rule)
    ws = weight_scaling(tail, h, 0.7, rule=rule)
    assert torch.allclose(exact.geometric, ws, atol=1e-12)  # Srivastava et al. 2014, section 9.2
    assert not torch.allclose(exact.arithmetic, ws, atol=1e-3)  # but not the arithmetic mean


def test_channelwise_enumeration_matches_brute_force():
    torch.manual_seed(2)
    h = torch.randn(2, 3, 2, 2, dtype=torch.float64)  # 3 channels -> 8 masks
    w = torch.randn(12, dtype=torch.float64)
    fn = lambda v: torch.tanh(v.flatten(1) @ w)  # (R,)
    expected = torch.zeros(2, dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=3):
        mask = torch.tensor(bits, dtype=torch.float64).view(1, 3, 1, 1)
        p = torch.where(mask.flatten() > 0, 0.6, 0.4).prod()
        expected += p * fn(h * mask / 0.6)
    exact = exact_expectation(fn, h, 0.6, rule=inverted_dropout, channelwise=True)
    assert torch.allclose(exact, expected, atol=1e-12)


def test_mc_dropout_converges_to_the_exact_arithmetic_mean():
    torch.manual_seed(3)
    layer = InvertedDropout(drop=0.5)
    tail = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    h = torch.randn(20, 6).relu() + 0.2
    exact = exact_ensemble(tail, h, layer.keep, rule=layer.function)
    gaps = [ensemble_gaps(exact.arithmetic, MCDropout(nn.Sequential(layer, tail), t, seed=0).predict(h).proba)["max_abs"]
            for t in (10, 4000)]
    assert gaps[1] < 0.03 and gaps[1] < gaps[0]


def test_split_at_dropout_recovers_the_network():
    torch.manual_seed(4)
    model = MLP((1, 3, 3), 4, hidden=(10,), dropout=0.5).eval()
    head, layer, tail = split_at_dropout(model.net)
    x = torch.randn(5, 1, 3, 3)
    assert isinstance(layer, InvertedDropout)
    assert torch.allclose(tail(layer(head(x))), model(x))
    with pytest.raises(ValueError, match="2 dropout layers"):
        split_at_dropout(MLP((1, 3, 3), 4, hidden=(10, 10), dropout=0.5).net)
    with pytest.raises(ValueError, match="nn.Sequential"):
        split_at_dropout(model)  # type: ignore[arg-type]


def test_bad_inputs_name_the_value():
    fn = lambda v: v.sum(dim=1)
    with pytest.raises(ValueError, match="units=21"):
        exact_expectation(fn, torch.randn(2, 21), 0.5)
    with pytest.raises(ValueError, match="units=21"):
        enumerate_masks(21, 0.5)
    with pytest.raises(ValueError, match="keep=0"):
        exact_expectation(fn, torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="keep=1.5"):
        two_input_example(1, 1, 1, 1, keep=1.5)
    with pytest.raises(ValueError, match="units=0"):
        enumerate_masks(0, 0.5)
