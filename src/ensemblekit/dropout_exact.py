"""Dropout as an exact ensemble: enumerate all 2^n masks of one dropout layer.

A network with one dropout layer of n units is an ensemble of 2^n thinned networks that share their
weights; mask m (n bits, k of them ones) has probability ``keep^k (1 - keep)^(n - k)``. For n <= 20
the ensemble can be evaluated exactly, which shows what the test-time shortcuts actually compute:

- the **arithmetic mean** of the members' probabilities, ``sum_m P(m) p_m`` — what MC dropout
  estimates by sampling T masks;
- the **normalised geometric mean**, ``exp(sum_m P(m) log p_m)`` renormalised over classes — which
  weight scaling computes *exactly* when the layers after the dropout are one linear layer and a
  softmax (Srivastava et al. 2014, section 9.2; Baldi & Sadowski 2013), and only approximately
  through any further nonlinearity;
- **weight scaling**: one pass with the layer in eval mode (vanilla ``x * keep``, inverted identity).

The lecture's two-input example: a unit ``a = w0 x m0 + w1 y m1`` with masks kept with probability
p has ``E[a] = p (w0 x + w1 y)`` — the four masks, weighted, sum to exactly the weight-scaled unit
(`two_input_example`).

Masks are generated chunk by chunk from the bits of the mask index, so 2^20 masks never sit in
memory at once; the layers after the dropout see at most ``max_rows`` rows per forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .dropout import Dropout, inverted_dropout, is_dropout, mask_shape, vanilla_dropout
from .metrics import evaluate

__all__ = [
    "MAX_UNITS",
    "ExactEnsemble",
    "enumerate_masks",
    "exact_expectation",
    "exact_ensemble",
    "weight_scaling",
    "split_at_dropout",
    "layer_rule",
    "two_input_example",
    "ensemble_gaps",
]

MAX_UNITS = 20  # 2^20 ~ 1e6 masks: seconds for a small head; beyond that, sample (MC dropout)
DEFAULT_MAX_ROWS = 1 << 18  # rows per forward through the layers after the dropout
DropoutRule = Callable[[Tensor, Tensor | None, float], Tensor]  # (x, mask or None, keep) -> output


def _check_units(n: int) -> None:
    if n < 1:
        raise ValueError(f"units={n}: the dropout layer needs at least 1 unit to enumerate masks")
    if n > MAX_UNITS:
        raise ValueError(
            f"units={n}: exact enumeration of 2^{n} masks is limited to n <= {MAX_UNITS} units; "
            "use MC dropout (ensemblekit.mc_dropout) to sample masks instead"
        )


def _check_keep(keep: float) -> None:
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep}: the keep probability must lie in (0, 1]")


def _mask_chunks(n: int, keep: float, chunk: int, device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (masks (m, n) float32 0/1, probabilities (m,) float64) covering all 2^n masks once."""
    bits = torch.arange(n, device=device)
    for start in range(0, 2**n, chunk):
        index = torch.arange(start, min(start + chunk, 2**n), device=device)
        masks = ((index[:, None] >> bits) & 1).float()  # (m, n): bit j of the index is unit j
        kept = masks.sum(dim=1).double()
        yield masks, keep**kept * (1.0 - keep) ** (n - kept)


def enumerate_masks(n: int, keep: float) -> tuple[Tensor, Tensor]:
    """All 2^n masks (2^n, n) as 0/1 floats and their probabilities (2^n,), which sum to 1."""
    _check_units(n)
    _check_keep(keep)
    masks, probs = next(_mask_chunks(n, keep, 2**n))
    return masks, probs


def exact_expectation(
    fn: Callable[[Tensor], Tensor], h: Tensor, keep: float, *, rule: DropoutRule = inverted_dropout,
    channelwise: bool = False, max_rows: int = DEFAULT_MAX_ROWS,
) -> Tensor:
    """``sum_m P(m) fn(rule(h, m, keep))`` over all masks m of the dropout acting on ``h`` (B, ...).

    ``fn`` maps a batch (R, ...) to outputs (R, ...), row by row; ``rule`` is the training-mode
    dropout (`inverted_dropout` or `vanilla_dropout`). Returns the expectation, (B, ...) float64.
    """
    return _expectations(lambda x: (fn(x),), h, keep, rule=rule, channelwise=channelwise, max_rows=max_rows)[0]


def _expectations(
    fn: Callable[[Tensor], tuple[Tensor, ...]], h: Tensor, keep: float, *, rule: DropoutRule,
    channelwise: bool, max_rows: int,
) -> list[Tensor]:
    """`exact_expectation` of several outputs of one forward (each chunk runs ``fn`` once)."""
    _check_keep(keep)
    unit_shape = mask_shape(h, channelwise)[1:]  # mask entries per sample
    n = math.prod(unit_shape)
    _check_units(n)
    b = h.shape[0]
    totals: list[Tensor] = []
    for masks, probs in _mask_chunks(n, keep, max(1, max_rows // max(b, 1)), h.device):
        m = masks.shape[0]
        masked = rule(h.unsqueeze(0), masks.view(m, 1, *unit_shape).to(h.dtype), keep)  # (m, B, ...)
        outs = fn(masked.reshape(m * b, *h.shape[1:]))  # each (m*B, ...)
        # chunk sum in the output's dtype (one matmul), the running total in float64
        sums = [(probs.to(o) @ o.reshape(m, -1)).double().view(b, *o.shape[1:]) for o in outs]  # each (B, ...)
        totals = sums if not totals else [t + s for t, s in zip(totals, sums)]
    return totals


@dataclass(frozen=True)
class ExactEnsemble:
    """The exact dropout ensemble of N inputs over C classes (float64)."""

    arithmetic: Tensor  # (N, C) sum_m P(m) softmax(tail(masked h))
    geometric: Tensor  # (N, C) normalised exp(sum_m P(m) log softmax(...))
    units: int  # n: 2^n members
    keep: float


def exact_ensemble(
    tail: Callable[[Tensor], Tensor], h: Tensor, keep: float, *, rule: DropoutRule = inverted_dropout,
    channelwise: bool = False, max_rows: int = DEFAULT_MAX_ROWS,
) -> ExactEnsemble:
    """Arithmetic and normalised geometric means of ``softmax(tail(dropout(h)))`` over all masks.

    ``h`` (N, ...) is the input of the dropout layer, ``tail`` the network after it (to logits).
    """
    def both(x: Tensor) -> tuple[Tensor, Tensor]:  # (R, ...) -> p (R, C), log p (R, C)
        log_p = tail(x).log_softmax(dim=-1)
        return log_p.exp(), log_p

    with torch.no_grad():
        arithmetic, mean_log = _expectations(both, h, keep, rule=rule, channelwise=channelwise, max_rows=max_rows)
    geometric = mean_log.softmax(dim=-1)  # exp(E log p), renormalised over classes
    return ExactEnsemble(arithmetic=arithmetic, geometric=geometric, units=math.prod(mask_shape(h, channelwise)[1:]), keep=keep)


def weight_scaling(tail: Callable[[Tensor], Tensor], h: Tensor, keep: float, *, rule: DropoutRule = inverted_dropout) -> Tensor:
    """One deterministic pass: the dropout in eval mode (``rule(h, None, keep)``), then ``tail``; (N, C)."""
    with torch.no_grad():
        return tail(rule(h, None, keep)).softmax(dim=-1).double()


def layer_rule(layer: nn.Module) -> tuple[DropoutRule, float, bool]:
    """(training rule, keep probability, channelwise) of one of our or torch's dropout layers."""
    if isinstance(layer, Dropout):
        return layer.function, layer.keep, layer.channelwise
    if isinstance(layer, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return inverted_dropout, 1.0 - layer.p, not isinstance(layer, nn.Dropout)
    raise ValueError(f"{type(layer).__name__} is not a dropout layer whose masks can be enumerated")


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def split_at_dropout(layers: nn.Sequential) -> tuple[nn.Sequential, nn.Module, nn.Sequential]:
    """(head, dropout layer, tail) of a (possibly nested) ``nn.Sequential`` with exactly one
    dropout layer, e.g. ``model.net`` of a one-hidden-layer `ensemblekit.models.MLP`."""
    if not isinstance(layers, nn.Sequential):
        raise ValueError(f"{type(layers).__name__}: pass an nn.Sequential (for an MLP, its .net)")
    leaves = _leaves(layers)
    where = [i for i, m in enumerate(leaves) if is_dropout(m)]
    if len(where) != 1:
        raise ValueError(f"the network has {len(where)} dropout layers; exact enumeration needs exactly one")
    i = where[0]
    return nn.Sequential(*leaves[:i]), leaves[i], nn.Sequential(*leaves[i + 1 :])


def two_input_example(w0: float, w1: float, x: float, y: float, keep: float) -> dict[str, Any]:
    """The lecture's unit ``a = w0 x m0 + w1 y m1`` (vanilla dropout on its two inputs).

    Returns each mask with its probability and ``a``, the enumerated ``E[a]`` and the closed form
    ``keep * (w0 x + w1 y)`` (what vanilla weight scaling computes).
    """
    _check_keep(keep)
    w = torch.tensor([w0, w1], dtype=torch.float64)
    h = torch.tensor([[x, y]], dtype=torch.float64)
    masks, probs = enumerate_masks(2, keep)
    members = [
        {"mask": [int(v) for v in m.tolist()], "probability": p.item(), "a": float((h[0] * m.double() * w).sum())}
        for m, p in zip(masks, probs)
    ]
    expected = exact_expectation(lambda v: v @ w, h, keep, rule=vanilla_dropout).item()
    return {"members": members, "expected": expected, "closed_form": keep * (w0 * x + w1 * y)}


def ensemble_gaps(reference: Tensor, proba: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """How far ``proba`` (N, C) is from the exact ensemble ``reference`` (N, C): mean total
    variation, largest |difference|, mean KL(reference || proba), fraction of argmax disagreements;
    with ``labels`` also its own accuracy, NLL, Brier and ECE."""
    ref, q = reference.double(), proba.double()
    gaps = {
        "tv": 0.5 * (ref - q).abs().sum(dim=1).mean().item(),
        "max_abs": (ref - q).abs().max().item(),
        "kl": (ref * (ref.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum(dim=1).mean().item(),
        "argmax_disagree": (ref.argmax(1) != q.argmax(1)).double().mean().item(),
    }
    if labels is not None:
        gaps.update(evaluate(q, labels))
    return gaps
