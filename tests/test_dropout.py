"""Dropout layers against their definitions: masks vs the binomial law, eval vs the exact
expectation of training (enumerating every mask), vanilla vs inverted equivalence."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from ensemblekit.dropout import (
    DROPOUT_KINDS, Dropout, InvertedDropout, VanillaDropout, is_dropout, keep_probability, make_dropout,
)
from ensemblekit.models import MLP, build_model


def within_binomial(kept: int, n: int, keep: float, sigmas: float = 5.0) -> bool:
    return abs(kept - n * keep) <= sigmas * math.sqrt(n * keep * (1 - keep))


@pytest.mark.parametrize("cls", [VanillaDropout, InvertedDropout])
@pytest.mark.parametrize("keep", [0.8, 0.3])
def test_keep_fraction_elementwise_within_binomial_bounds(cls, keep):
    torch.manual_seed(0)
    layer = cls(keep=keep).train()
    out = layer(torch.ones(400, 500))
    kept = int((out != 0).sum())
    assert within_binomial(kept, out.numel(), keep), (kept / out.numel(), keep)
    # drop= is the complement: same keep probability, so the same law
    assert cls(drop=1 - keep).keep == pytest.approx(keep)


@pytest.mark.parametrize("cls", [VanillaDropout, InvertedDropout])
def test_channelwise_masks_whole_channels_within_binomial_bounds(cls):
    torch.manual_seed(1)
    keep = 0.7
    out = cls(keep=keep, channelwise=True).train()(torch.ones(128, 64, 3, 5))
    nonzero = out != 0  # (B, C, H, W)
    per_channel = nonzero.flatten(2)
    assert (per_channel.all(dim=2) | ~per_channel.any(dim=2)).all(), "a channel was partly dropped"
    kept = int(per_channel[:, :, 0].sum())
    assert within_binomial(kept, 128 * 64, keep)


def test_training_values_vanilla_keeps_inverted_rescales():
    torch.manual_seed(2)
    x = torch.randn(50, 40)
    v = VanillaDropout(drop=0.25).train()(x)
    i = InvertedDropout(drop=0.25).train()(x)
    assert torch.all((v == 0) | (v == x))
    assert torch.allclose(i[i != 0], x[i != 0] / 0.75)


def _expected_training_output(layer: Dropout, x: torch.Tensor) -> torch.Tensor:
    """sum over every 0/1 mask of P(mask) * layer(x; mask), masks injected through mask_sampler."""
    layer.train()
    total = torch.zeros_like(x, dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=x.numel()):
        mask = torch.tensor(bits, dtype=x.dtype).view_as(x)
        k = int(mask.sum())
        prob = layer.keep**k * (1 - layer.keep) ** (x.numel() - k)
        layer.mask_sampler = lambda shape, like, mask=mask: mask.view(shape)
        total += prob * layer(x).double()
    layer.mask_sampler = None
    return total


def test_vanilla_eval_equals_exact_expectation_of_training():
    x = torch.tensor([[1.5, -2.0, 0.5], [3.0, 0.25, -1.0]], dtype=torch.float64)  # 6 units, 64 masks
    layer = VanillaDropout(keep=0.6)
    expected = _expected_training_output(layer, x)
    assert torch.allclose(layer.eval()(x).double(), expected, atol=1e-12)
    assert torch.allclose(expected, 0.6 * x)
    # and not the identity: a vanilla layer without test-time scaling would fail this
    assert not torch.allclose(expected, x)


def test_inverted_training_expectation_equals_input():
    x = torch.tensor([[1.5, -2.0, 0.5], [3.0, 0.25, -1.0]], dtype=torch.float64)
    layer = InvertedDropout(keep=0.6)
    assert torch.allclose(_expected_training_output(layer, x), x, atol=1e-12)  # exact, by enumeration
    assert torch.equal(layer.eval()(x), x)
    # and by sampling: the mean of 20,000 passes is within 5 standard errors of x
    torch.manual_seed(3)
    samples = layer.train()(x.expand(20000, 2, 3).contiguous())
    se = x.abs() * math.sqrt((1 - 0.6) / 0.6) / math.sqrt(20000)
    assert ((samples.mean(0) - x).abs() <= 5 * se).all()


def test_expectation_through_a_linear_layer_matches_weight_scaling():
    torch.manual_seed(4)
    x = torch.randn(1, 5, dtype=torch.float64)
    linear = nn.Linear(5, 3).double()
    for layer in (VanillaDropout(keep=0.7), InvertedDropout(keep=0.7)):
        expected = _expected_training_output(layer, x)
        assert torch.allclose(linear(expected), linear(layer.eval()(x)), atol=1e-12)


def _scale_layers_after_dropout(net: nn.Sequential, keep: float) -> None:
    for prev, layer in zip(net, list(net)[1:]):
        if isinstance(prev, Dropout) and isinstance(layer, nn.Linear):
            layer.weight.data.mul_(keep)


def test_vanilla_and_inverted_nets_with_rescaled_weights_predict_identically():
    keep = 0.7
    config = {"arch": "mlp", "in_shape": [1, 6, 6], "num_classes": 4, "hidden": [16, 16], "dropout": 1 - keep}
    vanilla = build_model({**config, "dropout_kind": "vanilla"}, seed=0)
    inverted = build_model({**config, "dropout_kind": "inverted"}, seed=0)
    inverted.load_state_dict(vanilla.state_dict())
    _scale_layers_after_dropout(inverted.net, keep)  # W_inverted = keep * W_vanilla
    x = torch.randn(32, 1, 6, 6)
    vanilla.eval(), inverted.eval()
    assert torch.allclose(vanilla(x), inverted(x), atol=1e-5)
    # training mode too, with the same masks (same seed, same sampling code)
    vanilla.train(), inverted.train()
    torch.manual_seed(5)
    out_v = vanilla(x)
    torch.manual_seed(5)
    out_i = inverted(x)
    assert torch.allclose(out_v, out_i, atol=1e-5)
    # without the rescaling they differ: the test can fail
    inverted.load_state_dict(vanilla.state_dict())
    vanilla.eval(), inverted.eval()
    assert not torch.allclose(vanilla(x), inverted(x), atol=1e-3)


def test_models_wire_the_requested_kind():
    for kind, cls in (("vanilla", VanillaDropout), ("inverted", InvertedDropout)):
        model = MLP((1, 4, 4), 3, hidden=(8, 8), dropout=0.2, dropout_kind=kind)
        layers = [m for m in model.modules() if is_dropout(m)]
        assert len(layers) == 2 and all(type(m) is cls and m.keep == pytest.approx(0.8) for m in layers)
    assert not any(is_dropout(m) for m in MLP((1, 4, 4), 3, dropout=0.0).modules())
    assert set(DROPOUT_KINDS) == {"vanilla", "inverted"}
    assert isinstance(make_dropout(0.5, "vanilla", channelwise=True), VanillaDropout)
    assert make_dropout(0.5, "vanilla", channelwise=True).channelwise
    assert is_dropout(nn.Dropout(0.1)) and is_dropout(nn.Dropout2d(0.1)) and not is_dropout(nn.ReLU())


def test_keep_one_is_identity_in_both_modes():
    x = torch.randn(10, 10)
    for cls in (VanillaDropout, InvertedDropout):
        assert torch.equal(cls(keep=1.0).train()(x), x) and torch.equal(cls(drop=0.0).eval()(x), x)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"drop": 1.0}, "drop=1.0"),
        ({"drop": -0.1}, "drop=-0.1"),
        ({"keep": 0.0}, "keep=0.0"),
        ({"keep": 1.5}, "keep=1.5"),
        ({"drop": 0.2, "keep": 0.8}, "both"),
        ({}, "neither"),
    ],
)
def test_bad_rates_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        keep_probability(**kwargs)
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        InvertedDropout(**kwargs)


def test_rates_are_keyword_only_and_base_is_abstract():
    with pytest.raises(TypeError):
        VanillaDropout(0.5)  # type: ignore[misc]  # which p? refuse to guess
    with pytest.raises(TypeError, match="VanillaDropout or InvertedDropout"):
        Dropout(drop=0.5)
    with pytest.raises(ValueError, match="'gaussian'"):
        make_dropout(0.5, "gaussian")
    with pytest.raises(ValueError, match="drop=1.0"):
        make_dropout(1.0, "vanilla")


def test_cli_dropout_comparison_and_exact_demo(tmp_path, capsys):
    import json

    from ensemblekit.cli import main

    out = tmp_path / "compare.json"
    args = ["dropout", "--dataset", "digits", "--epochs", "1", "--seeds", "2", "--hidden", "16",
            "--samples", "1", "3", "--quiet", "--plot", str(tmp_path / "t.png"), "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    names = [row["name"] for row in result["rows"]]
    assert names == ["no dropout", "vanilla WS", "vanilla MC T=3", "inverted WS", "inverted MC T=3"]
    assert set(result["curves"]["vanilla"]) == {"1", "3"} and (tmp_path / "t.png").stat().st_size > 0
    assert {"vanilla_mc_nll_le_ws", "inverted_entropy_auroc", "vanilla_vs_inverted_ws"} <= set(result["checks"])

    out = tmp_path / "exact.json"
    assert main(["dropout", "--exact", "--dataset", "digits", "--epochs", "1", "--units", "4", "--samples", "2",
                 "--exact-inputs", "50", "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"][0]["test"]["tv"] == 0.0  # the exact mean against itself
    assert result["two_input_example"]["expected"] == pytest.approx(result["two_input_example"]["closed_form"])


@pytest.mark.parametrize("bad, fragment", [
    (["--samples", "0"], "--samples"), (["--exact", "--units", "21"], "--units 21"), (["--drop", "1.0"], "--drop 1.0"),
])
def test_cli_bad_input_exits_2_naming_the_value(bad, fragment, capsys):
    from ensemblekit.cli import main

    assert main(["dropout", "--dataset", "digits", *bad]) == 2
    assert fragment in capsys.readouterr().err
