"""Dropout layers used by the reference models.

The foundation ships inverted dropout through torch's own modules; the dropout issue replaces this
module with vanilla / inverted layers that keep training and test behaviour side by side.
"""

from __future__ import annotations

from torch import nn

__all__ = ["DROPOUT_KINDS", "make_dropout"]

DROPOUT_KINDS = ("inverted",)


def make_dropout(drop: float, kind: str = "inverted", *, channelwise: bool = False) -> nn.Module:
    """A dropout layer that zeroes each unit with probability ``drop`` (torch's convention)."""
    if kind not in DROPOUT_KINDS:
        raise ValueError(f"dropout kind {kind!r} unknown; choose one of {', '.join(DROPOUT_KINDS)}")
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop={drop}: the drop probability must lie in [0, 1)")
    if drop == 0.0:
        return nn.Identity()
    return nn.Dropout2d(drop) if channelwise else nn.Dropout(drop)
