"""ensemblekit.models: output shapes for the input shapes the project uses, config round trips,
seeded initialisation and bad configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ensemblekit.models import MLP, SmallCNN, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 105, 105)]


def _config(arch: str, in_shape, num_classes: int) -> dict:
    small = {"mlp": {"hidden": [16, 8]}, "cnn": {"channels": [4, 8], "hidden": 16}}[arch]
    return {"arch": arch, "in_shape": list(in_shape), "num_classes": num_classes, **small}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("num_classes", [2, 10, 37])
def test_output_shape(arch, in_shape, num_classes):
    model = build_model(_config(arch, in_shape, num_classes), seed=0)
    x = torch.randn(3, *in_shape)
    out = model(x)
    assert out.shape == (3, num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_cnn_stops_pooling_at_one_pixel():
    model = SmallCNN((1, 8, 8), 10, channels=(4, 4, 4, 4, 4), hidden=8)  # 8 -> 4 -> 2 -> 1 -> 1 -> 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cnn_blocks_and_batchnorm():
    model = SmallCNN((3, 32, 32), 10, channels=(4, 8), convs_per_block=2, batchnorm=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with_bn = SmallCNN((3, 32, 32), 10, channels=(4, 8))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_config_round_trip(arch):
    model = build_model({**_config(arch, (1, 28, 28), 10), "dropout": 0.25}, seed=7)
    config = json.loads(json.dumps(model.config))  # JSON-safe, as checkpoints store it
    rebuilt = build_model(config, seed=7)
    assert rebuilt.config == model.config and type(rebuilt) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name


def test_defaults_are_in_the_config():
    assert MLP((1, 28, 28), 10).config == {
        "arch": "mlp", "in_shape": [1, 28, 28], "num_classes": 10, "hidden": [512, 512],
        "dropout": 0.0, "dropout_kind": "inverted",
    }
    assert build_model(SmallCNN((3, 32, 32), 10).config).config["channels"] == [32, 64]


def test_seed_fixes_weights_and_leaves_the_global_rng_alone():
    config = _config("cnn", (1, 28, 28), 10)
    a, b, c = build_model(config, seed=1), build_model(config, seed=1), build_model(config, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_model(config, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_dropout_is_active_in_training_only():
    model = MLP((1, 8, 8), 10, hidden=(64,), dropout=0.5)
    x = torch.randn(4, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = MLP((1, 8, 8), 10, hidden=(64,))
    assert not any("Dropout" in type(m).__name__ for m in plain.modules())


@pytest.mark.parametrize(
    "config, argument",
    [
        ({"arch": "resnet", "in_shape": [1, 8, 8], "num_classes": 10}, "resnet"),
        ({"in_shape": [1, 8, 8], "num_classes": 10}, "architecture"),
        ({"arch": "mlp", "in_shape": [8, 8], "num_classes": 10}, "in_shape"),
        ({"arch": "cnn", "in_shape": [1, 0, 8], "num_classes": 10}, "in_shape"),
        ({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 1}, "num_classes"),
        ({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "hidden": [16, 0]}, "hidden"),
        ({"arch": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "channels": []}, "channels"),
        ({"arch": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "convs_per_block": 0}, "convs_per_block"),
        ({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "dropout": 1.0}, "1.0"),
        ({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "dropout": 0.5, "dropout_kind": "bogus"}, "bogus"),
        ({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "hiden": [16]}, "hiden"),
        ({"arch": "cnn", "num_classes": 10}, "in_shape"),
    ],
)
def test_bad_config_is_a_value_error_naming_it(config, argument):
    with pytest.raises(ValueError, match=argument):
        build_model(config)
