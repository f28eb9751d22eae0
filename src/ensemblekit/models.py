"""Reference networks: an MLP and a small CNN, both built from a plain config dict.

A model's config (``model.config``) is JSON-safe and rebuilds the same architecture with
`build_model`, which is what checkpoints store. Any input shape (C, H, W) and class count work.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .dropout import make_dropout

__all__ = ["MLP", "SmallCNN", "ARCHITECTURES", "build_model"]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (512, 512),
        dropout: float = 0.0,
        dropout_kind: str = "inverted",
    ) -> None:
        super().__init__()
        _check_shape(in_shape, num_classes)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden={list(hidden)}: every layer needs at least 1 unit")
        self.config = {
            "arch": "mlp", "in_shape": list(in_shape), "num_classes": num_classes,
            "hidden": list(hidden), "dropout": dropout, "dropout_kind": dropout_kind,
        }
        width = int(torch.tensor(in_shape).prod())
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), make_dropout(dropout, dropout_kind)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.net(x)


class SmallCNN(nn.Module):
    """[[Conv3x3 -> (BN) -> ReLU] x convs_per_block -> MaxPool2] per width -> Dropout -> MLP head.

    Pooling stops once the feature map is 1 pixel wide, so 8x8 digits and 105x105 Omniglot both work.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        batchnorm: bool = True,
        dropout: float = 0.0,
        dropout_kind: str = "inverted",
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        _check_shape(in_shape, num_classes)
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block={convs_per_block}: must be >= 1")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels={list(channels)}: give one or more positive widths")
        self.config = {
            "arch": "cnn", "in_shape": list(in_shape), "num_classes": num_classes,
            "channels": list(channels), "hidden": hidden, "batchnorm": batchnorm,
            "dropout": dropout, "dropout_kind": dropout_kind, "convs_per_block": convs_per_block,
        }
        c_in, h, w = in_shape
        blocks: list[nn.Module] = []
        for c_out in channels:
            for c_from in [c_in] + [c_out] * (convs_per_block - 1):
                blocks += [nn.Conv2d(c_from, c_out, 3, padding=1, bias=not batchnorm)]
                blocks += [nn.BatchNorm2d(c_out)] if batchnorm else []
                blocks += [nn.ReLU(inplace=True)]
            if min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            make_dropout(dropout, dropout_kind),
            nn.Linear(c_in * h * w, hidden),
            nn.ReLU(inplace=True),
            make_dropout(dropout, dropout_kind),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


def _check_shape(in_shape: Sequence[int], num_classes: int) -> None:
    if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
        raise ValueError(f"in_shape={list(in_shape)}: expected (channels, height, width), all positive")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": SmallCNN}


def build_model(config: dict[str, Any], *, seed: int | None = None) -> nn.Module:
    """Build the architecture described by ``config``; with ``seed``, its initial weights are fixed."""
    arch = config.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    # a misspelt or missing key is a bad config (ValueError naming it), not a TypeError deep inside
    params = inspect.signature(ARCHITECTURES[arch]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"{arch} config: unknown keys {unknown}; allowed: {', '.join(params)}")
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               and k not in kwargs]
    if missing:
        raise ValueError(f"{arch} config: missing required keys {missing}")
    if seed is None:
        return ARCHITECTURES[arch](**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[arch](**kwargs)
