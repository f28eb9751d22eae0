"""Monte-Carlo dropout: keep dropout on at test time and average T stochastic passes.

Weight scaling (one deterministic pass, `ensemblekit.dropout`) approximates the average over the
2^n thinned networks; MC dropout estimates it by sampling T of them (Gal & Ghahramani 2016, "Dropout
as a Bayesian approximation", ICML). The spread of the T predictions is a measure of uncertainty:

- predictive entropy ``H[mean_t p_t]``: total uncertainty;
- mutual information (BALD, Houlsby et al. 2011) ``H[mean_t p_t] - mean_t H[p_t]``: the part due to
  disagreement between the thinned networks (model uncertainty);
- per-class variance ``Var_t[p_t]`` (population variance, divided by T).

**Speed.** The T passes are not a Python loop: T copies of the batch are stacked into the batch
dimension and run in one forward, ``(T*B, ...) -> (T*B, C) -> (T, B, C)``, in chunks of at most
``max_batch`` rows so memory stays bounded for any T. Dropout masks are drawn per element, so each
copy gets its own independent masks. This assumes the model treats samples independently in eval
mode (true for Linear/Conv/BatchNorm-in-eval; not for batch-statistics layers in training mode).

**Which modules are switched.** Only dropout modules go to training mode: ours
(`ensemblekit.dropout.Dropout`) and torch's ``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``. Everything else stays in eval (BatchNorm keeps its
running statistics). A model that calls the functional ``F.dropout(x, p, training=self.training)``
cannot be switched from outside without also switching the rest of the module; replace the call by
a module (``nn.Dropout`` or `ensemblekit.dropout.InvertedDropout`) to use it here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from .dropout import is_dropout

__all__ = [
    "MCPrediction",
    "dropout_modules",
    "dropout_train_mode",
    "iter_mc_samples",
    "mc_samples",
    "summarize",
    "predictive_entropy",
    "MCDropout",
    "DEFAULT_MAX_BATCH",
]

DEFAULT_MAX_BATCH = 4096  # rows per forward: T*B is split into chunks of at most this many


@dataclass(frozen=True)
class MCPrediction:
    """Summary of T stochastic passes for N inputs over C classes (float64 statistics)."""

    proba: Tensor  # (N, C) mean of the T softmax outputs: the MC dropout prediction
    entropy: Tensor  # (N,) predictive entropy H[proba], nats
    expected_entropy: Tensor  # (N,) mean_t H[p_t], nats
    mutual_information: Tensor  # (N,) BALD = entropy - expected_entropy >= 0
    variance: Tensor  # (N, C) per-class variance of p_t over the T passes
    samples: int  # T


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout module in ``model`` (ours and torch's)."""
    return [m for m in model.modules() if is_dropout(m)]


@contextlib.contextmanager
def dropout_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: ``model`` in eval mode except its dropout modules; modes restored after.

    Raises ValueError when the model has no dropout module (T passes would all be identical).
    """
    modes = {m: m.training for m in model.modules()}
    dropouts = _require_dropout(model)
    model.eval()
    for m in dropouts:
        m.train()
    try:
        yield model
    finally:
        for m, was_training in modes.items():
            m.training = was_training


def _require_dropout(model: nn.Module) -> list[nn.Module]:
    dropouts = dropout_modules(model)
    if not dropouts:
        raise ValueError(
            f"{type(model).__name__} has no dropout module to switch on (functional F.dropout calls "
            "cannot be switched): build it with dropout > 0 or use nn.Dropout / ensemblekit.dropout layers"
        )
    return dropouts


def _check_samples(samples: int, max_batch: int) -> None:
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r}: MC dropout needs T >= 1 stochastic passes")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: must be >= 1 row per forward")


@torch.no_grad()
def iter_mc_samples(
    model: nn.Module, inputs: Tensor, samples: int, *, max_batch: int = DEFAULT_MAX_BATCH
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(input_slice, proba)`` with ``proba`` of shape (t, b, C): t stochastic passes over
    inputs[input_slice] (b rows). Over the whole iteration each input gets exactly ``samples``
    passes. The caller sets the modes (see `dropout_train_mode`)."""
    _check_samples(samples, max_batch)
    device = next(model.parameters()).device
    n = inputs.shape[0]
    rows = min(n, max_batch)  # inputs per chunk
    copies = max(1, max_batch // max(rows, 1))  # copies of that chunk per forward
    for start in range(0, n, rows):
        x = inputs[start : start + rows].to(device)
        b = x.shape[0]
        done = 0
        while done < samples:
            t = min(copies, samples - done)
            stacked = x.repeat(t, *([1] * (x.ndim - 1)))  # (t*b, ...): copy k holds rows k*b..(k+1)*b-1
            logits = model(stacked)  # (t*b, C), independent masks per row
            yield slice(start, start + b), logits.view(t, b, -1).softmax(dim=-1)  # (t, b, C)
            done += t


def mc_samples(model: nn.Module, inputs: Tensor, samples: int, *, max_batch: int = DEFAULT_MAX_BATCH) -> Tensor:
    """All T softmax outputs, (T, N, C): dropout on, everything else in eval. Memory grows with T;
    use `MCDropout.predict` for the summary alone."""
    parts: dict[int, list[Tensor]] = {}
    with dropout_train_mode(model):
        for where, proba in iter_mc_samples(model, inputs, samples, max_batch=max_batch):
            parts.setdefault(where.start, []).append(proba)
    return torch.cat([torch.cat(parts[s], dim=0) for s in sorted(parts)], dim=1)  # (T, N, C)


def predictive_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of probabilities (..., C) -> (...), with 0 log 0 = 0."""
    return -(p * p.clamp_min(1e-300).log()).sum(dim=-1)


def summarize(samples: Tensor) -> MCPrediction:
    """Mean, entropies, mutual information and variance of T softmax outputs (T, N, C)."""
    if samples.ndim != 3 or samples.shape[0] < 1:
        raise ValueError(f"expected samples of shape (T, N, C) with T >= 1, got {tuple(samples.shape)}")
    p = samples.double()
    mean = p.mean(dim=0)  # (N, C)
    entropy = predictive_entropy(mean)
    expected = predictive_entropy(p).mean(dim=0)
    return MCPrediction(
        proba=mean, entropy=entropy, expected_entropy=expected,
        mutual_information=(entropy - expected).clamp_min(0.0),
        variance=p.var(dim=0, unbiased=False), samples=samples.shape[0],
    )


class MCDropout:
    """A predictor: ``MCDropout(model, samples=50).predict_proba(x)`` -> (N, C) mean probabilities.

    ``predict(x)`` returns the full `MCPrediction` (entropy, BALD, variance), accumulated chunk by
    chunk so memory does not grow with T; ``members_proba(x)`` returns all (T, N, C) outputs.
    ``seed`` makes the masks reproducible without touching the global RNG stream.
    """

    def __init__(
        self, model: nn.Module, samples: int = 50, *, max_batch: int = DEFAULT_MAX_BATCH, seed: int | None = None
    ) -> None:
        _check_samples(samples, max_batch)
        _require_dropout(model)
        self.model, self.samples, self.max_batch, self.seed = model, samples, max_batch, seed

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        if self.seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            yield

    def members_proba(self, inputs: Tensor) -> Tensor:
        """(T, N, C): the softmax output of each of the T thinned networks."""
        with self._rng():
            return mc_samples(self.model, inputs, self.samples, max_batch=self.max_batch)

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> MCPrediction:
        n = inputs.shape[0]
        total = totsq = total_entropy = None
        with self._rng(), dropout_train_mode(self.model):
            for where, proba in iter_mc_samples(self.model, inputs, self.samples, max_batch=self.max_batch):
                p = proba.double()  # (t, b, C)
                if total is None:
                    c = p.shape[-1]
                    total = torch.zeros(n, c, dtype=torch.float64, device=p.device)
                    totsq = torch.zeros_like(total)
                    total_entropy = torch.zeros(n, dtype=torch.float64, device=p.device)
                total[where] += p.sum(dim=0)
                totsq[where] += p.square().sum(dim=0)
                total_entropy[where] += predictive_entropy(p).sum(dim=0)
        if total is None:
            raise ValueError("no inputs: MC dropout needs at least one input row")
        mean = total / self.samples
        entropy = predictive_entropy(mean)
        expected = total_entropy / self.samples
        return MCPrediction(
            proba=mean, entropy=entropy, expected_entropy=expected,
            mutual_information=(entropy - expected).clamp_min(0.0),
            variance=(totsq / self.samples - mean.square()).clamp_min(0.0), samples=self.samples,
        )

    def predict_proba(self, inputs: Tensor) -> Tensor:
        """(N, C) mean probabilities over the T passes (float32)."""
        return self.predict(inputs).proba.float()
