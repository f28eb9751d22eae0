"""Dropout, vanilla and inverted, with training and test behaviour side by side.

Dropout zeroes each unit independently during training (Srivastava et al. 2014, JMLR 15). At test
time the noise must be integrated out; one pass approximates that by making the test output equal
the *expected* training output. The two kinds differ only in where the keep probability goes:

=========  ==================================  ===========================
kind       training                            evaluation (weight scaling)
=========  ==================================  ===========================
vanilla    ``x * mask``                        ``x * keep``
inverted   ``x * mask / keep``                 ``x`` (identity)
=========  ==================================  ===========================

with ``mask ~ Bernoulli(keep)`` per element (or per channel: one draw per (sample, channel) of a
feature map, which is what conv layers want, since neighbouring pixels are strongly correlated).
Both have the same expectation in each mode, so a vanilla net with the layer after each dropout
multiplied by ``keep`` *is* the inverted net (`tests/test_dropout.py` checks it).

**Which p?** The lecture and the original paper write p for the probability of *keeping* a unit;
torch's ``nn.Dropout(p)`` means the probability of *dropping* it. These layers therefore take no
positional rate at all: pass exactly one of ``drop=`` or ``keep=`` (``keep = 1 - drop``), e.g.
``InvertedDropout(drop=0.5)`` or ``VanillaDropout(keep=0.8)``.

Masks are drawn per sample, so stacking T copies of a batch into the batch dimension gives T
independent masks per input (what `ensemblekit.mc_dropout` relies on). ``mask_sampler`` lets a
caller supply the masks (enumerate them, record them, replay them).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "DROPOUT_KINDS",
    "keep_probability",
    "mask_shape",
    "sample_mask",
    "vanilla_dropout",
    "inverted_dropout",
    "Dropout",
    "VanillaDropout",
    "InvertedDropout",
    "make_dropout",
    "is_dropout",
]

DROPOUT_KINDS = ("inverted", "vanilla")

MaskSampler = Callable[[tuple[int, ...], Tensor], Tensor]  # (mask shape, input) -> 0/1 mask


def keep_probability(*, drop: float | None = None, keep: float | None = None) -> float:
    """The keep probability from exactly one of ``drop`` (in [0, 1)) or ``keep`` (in (0, 1])."""
    if (drop is None) == (keep is None):
        given = "both" if drop is not None else "neither"
        raise ValueError(
            f"give exactly one of drop= (probability of zeroing a unit, torch's p) or keep= "
            f"(probability of keeping it, the lecture's p); got {given} (drop={drop}, keep={keep})"
        )
    if drop is not None:
        if not 0.0 <= float(drop) < 1.0:
            raise ValueError(f"drop={drop}: the drop probability must lie in [0, 1) (did you mean keep={drop}?)")
        return 1.0 - float(drop)
    if not 0.0 < float(keep) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"keep={keep}: the keep probability must lie in (0, 1]")
    return float(keep)  # type: ignore[arg-type]


def mask_shape(x: Tensor, channelwise: bool) -> tuple[int, ...]:
    """Element-wise: the shape of ``x``. Channel-wise on (B, C, ...): (B, C, 1, ...), one draw per
    sample and channel, broadcast over the spatial positions."""
    if channelwise and x.ndim >= 3:
        return tuple(x.shape[:2]) + (1,) * (x.ndim - 2)
    return tuple(x.shape)


def sample_mask(shape: tuple[int, ...], keep: float, like: Tensor) -> Tensor:
    """A 0/1 mask of ``shape`` with each entry 1 with probability ``keep`` (dtype/device of ``like``)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep)


def vanilla_dropout(x: Tensor, mask: Tensor | None, keep: float) -> Tensor:
    """Training (a mask given): ``x * mask``. Evaluation (``mask=None``): ``x * keep``, the expectation."""
    return x * keep if mask is None else x * mask


def inverted_dropout(x: Tensor, mask: Tensor | None, keep: float) -> Tensor:
    """Training (a mask given): ``x * mask / keep``. Evaluation (``mask=None``): ``x`` unchanged."""
    return x if mask is None else x * (mask / keep)


class Dropout(nn.Module):
    """Shared part of both kinds: the rate, the mask, the mode switch. Subclasses set ``kind``."""

    kind = ""
    function: Callable[[Tensor, Tensor | None, float], Tensor]  # (x, mask or None in eval, keep) -> output

    def __init__(self, *, drop: float | None = None, keep: float | None = None, channelwise: bool = False) -> None:
        if not self.kind:
            raise TypeError("Dropout is the shared base; use VanillaDropout or InvertedDropout")
        super().__init__()
        self.keep = keep_probability(drop=drop, keep=keep)
        self.channelwise = channelwise
        self.mask_sampler: MaskSampler | None = None  # None: Bernoulli(keep) masks

    @property
    def drop(self) -> float:
        return 1.0 - self.keep

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.keep == 1.0:
            return self.function(x, None, self.keep)
        shape = mask_shape(x, self.channelwise)
        mask = sample_mask(shape, self.keep, x) if self.mask_sampler is None else self.mask_sampler(shape, x)
        return self.function(x, mask, self.keep)

    def extra_repr(self) -> str:
        return f"keep={self.keep:g} (drop={self.drop:g}){', channelwise' if self.channelwise else ''}"


class VanillaDropout(Dropout):
    """Training: ``x * mask``; evaluation: ``x * keep`` (scale at test time, as in the 2014 paper)."""

    kind = "vanilla"
    function = staticmethod(vanilla_dropout)


class InvertedDropout(Dropout):
    """Training: ``x * mask / keep``; evaluation: identity (scale at training time, like torch)."""

    kind = "inverted"
    function = staticmethod(inverted_dropout)


_KIND_CLASSES: dict[str, type[Dropout]] = {"vanilla": VanillaDropout, "inverted": InvertedDropout}


def make_dropout(drop: float, kind: str = "inverted", *, channelwise: bool = False) -> nn.Module:
    """A dropout layer zeroing each unit with probability ``drop``; ``nn.Identity`` when ``drop == 0``.

    ``drop`` is positional here because model configs store the drop rate (torch's convention).
    """
    if kind not in DROPOUT_KINDS:
        raise ValueError(f"dropout kind {kind!r} unknown; choose one of {', '.join(DROPOUT_KINDS)}")
    keep = keep_probability(drop=drop)
    if keep == 1.0:
        return nn.Identity()
    return _KIND_CLASSES[kind](keep=keep, channelwise=channelwise)


def is_dropout(module: nn.Module) -> bool:
    """Ours or any of torch's dropout modules (Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout)."""
    return isinstance(module, (Dropout, nn.modules.dropout._DropoutNd))
