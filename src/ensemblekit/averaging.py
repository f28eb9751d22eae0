"""Polyak averaging of weights: an exponential moving average (EMA) and a uniform average (SWA).

Instead of the last parameter vector, use an average of the vectors visited late in training
(Polyak & Juditsky 1992). Two kinds:

- **EMA**: ``avg <- decay * avg + (1 - decay) * current`` after every optimiser step (or every
  ``every`` steps). The average spans roughly the last ``every / (1 - decay)`` steps. timm's
  optional warm-up lowers the decay early on, so the average is not stuck near the initial weights.
- **SWA** (Izmailov et al. 2018): the arithmetic mean of the weights at the end of each epoch from a
  start epoch on, trained with its own (constant, fairly high) learning rate. Its BatchNorm
  statistics must be recomputed afterwards (`recompute_batchnorm`): the running statistics of no
  single model match the averaged weights.

The core is two pure in-place functions on flat tensor lists (`ema_update_`, `swa_update_`), one
``torch._foreach_lerp_`` each. `EMA` and `SWA` are thin wrappers that hold an averaged copy of a
model (``.module``, in eval mode) and can be used in any loop (``ema.update(model)``) or passed as
hooks to `train.fit`. Buffers: floating buffers (BatchNorm running statistics) are copied from the
model (``buffers="copy"``) or averaged like parameters (``buffers="average"``); integer buffers
(``num_batches_tracked``) are always copied, never averaged.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BUFFER_POLICIES",
    "ema_update_",
    "swa_update_",
    "ema_decay",
    "EMA",
    "SWA",
    "recompute_batchnorm",
    "RecordAveraged",
    "plot_averaged_history",
]

BUFFER_POLICIES = ("copy", "average")


# ----------------------------------------------------------------------------- functional core


@torch.no_grad()
def ema_update_(averaged: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """In place: ``averaged[i] <- decay * averaged[i] + (1 - decay) * current[i]`` for all i.

    Floating tensors only, pairwise equal shapes and dtypes. Same device: one foreach kernel;
    otherwise (an average kept on the CPU for a GPU model) one lerp per tensor after a copy.
    """
    _lerp_(averaged, current, 1.0 - decay)


@torch.no_grad()
def swa_update_(averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: int) -> None:
    """In place: the running mean of ``num_averaged`` earlier tensors becomes that of one more.

    ``avg <- avg + (current - avg) / (n + 1)``; with ``num_averaged=0`` it copies ``current``.
    """
    if num_averaged < 0:
        raise ValueError(f"num_averaged={num_averaged}: must be >= 0")
    if num_averaged == 0:
        _copy_(averaged, current)
    else:
        _lerp_(averaged, current, 1.0 / (num_averaged + 1))


def ema_decay(decay: float, updates: int, *, warmup: bool = False, warmup_power: float = 2 / 3) -> float:
    """The decay used for update number ``updates`` (0-based).

    Without warm-up it is ``decay``. With warm-up (timm's ModelEmaV3, after @crowsonkb) it is
    ``min(decay, 1 - (1 + updates) ** -warmup_power)``: 0 at the first update (a plain copy), then
    rising, so early averages forget the random initial weights quickly. Power 2/3 reaches 0.999
    after ~31k updates; use 3/4 (0.999 after ~10k) or plain ``decay`` for short runs.
    """
    if not warmup:
        return decay
    return min(decay, 1.0 - (1.0 + updates) ** -warmup_power)


def _lerp_(averaged: Sequence[Tensor], current: Sequence[Tensor], weight: float) -> None:
    if len(averaged) != len(current):
        raise ValueError(f"{len(averaged)} averaged tensors but {len(current)} current ones")
    if not averaged:
        return
    if _same_device(averaged, current):
        torch._foreach_lerp_(list(averaged), list(current), weight)
    else:
        for a, c in zip(averaged, current):
            a.lerp_(c.to(a.device, non_blocking=True), weight)


def _copy_(destination: Sequence[Tensor], source: Sequence[Tensor]) -> None:
    if len(destination) != len(source):
        raise ValueError(f"{len(destination)} destination tensors but {len(source)} source ones")
    if destination and _same_device(destination, source):
        torch._foreach_copy_(list(destination), list(source))
    else:
        for d, s in zip(destination, source):
            d.copy_(s, non_blocking=True)


def _same_device(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return a[0].device == b[0].device  # one copy of a model lives on one device


# ----------------------------------------------------------------------------- stateful wrappers


def _tensor_slots(model: nn.Module) -> tuple[list[tuple[dict, str, Tensor]], list[tuple[dict, str, Tensor]]]:
    """(owner dict, name, tensor) of the model's parameters and of its buffers, in the order of
    ``model.parameters()`` and ``model.buffers()`` (each tensor once)."""
    seen: set[int] = set()
    params: list[tuple[dict, str, Tensor]] = []
    buffers: list[tuple[dict, str, Tensor]] = []
    for module in model.modules():
        for store, out in ((module._parameters, params), (module._buffers, buffers)):
            for name, tensor in store.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append((store, name, tensor))
    return params, buffers


class _Averaged:
    """An eval-mode copy of a model whose tensors are split into averaged and copied lists."""

    def __init__(self, model: nn.Module, buffers: str, device: str | torch.device | None) -> None:
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers={buffers!r}: choose 'copy' or 'average' (integer buffers are always copied)")
        self.buffers = buffers
        self.module = copy.deepcopy(model)
        if device is not None:
            self.module.to(device)
        self.module.eval().requires_grad_(False)
        averaged, copied, _ = self._split(self.module)
        self._averaged = [t.detach() for t in averaged]
        self._copied = [t.detach() for t in copied]
        self._cache: tuple | None = None  # (model, averaged, copied, slots) of the last update

    def _split(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[tuple[dict, str, Tensor]]]:
        """(tensors to average, tensors to copy, the slots they came from), in the model's own order."""
        param_slots, buffer_slots = _tensor_slots(model)
        params = [t for _, _, t in param_slots]
        buffers = [t for _, _, t in buffer_slots]
        floating = [b for b in buffers if b.is_floating_point()]
        integer = [b for b in buffers if not b.is_floating_point()]
        slots = param_slots + buffer_slots
        if self.buffers == "average":
            return params + floating, integer, slots
        return params, floating + integer, slots

    def _current(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """The model's tensors matching ``_averaged`` and ``_copied``.

        Walking the module tree costs more than the update itself for a small model, so the
        lists are cached per model and reused while every tensor is still the one in its
        module's slot (a dict lookup each; `Module.to` keeps the Parameter objects, a
        reassigned weight or buffer is noticed here).
        """
        cached = self._cache
        if cached is not None and cached[0] is model and all(d.get(n) is t for d, n, t in cached[3]):
            return cached[1], cached[2]
        averaged, copied, slots = self._split(model)
        if len(averaged) != len(self._averaged) or len(copied) != len(self._copied):
            raise ValueError(
                f"model has {len(averaged)}+{len(copied)} tensors but the average holds "
                f"{len(self._averaged)}+{len(self._copied)}: update with the model it was made from"
            )
        for mine, theirs in zip(self._averaged + self._copied, averaged + copied):
            if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
                raise ValueError(f"tensor {tuple(theirs.shape)} {theirs.dtype} does not match the average's {tuple(mine.shape)} {mine.dtype}")
        self._cache = (model, averaged, copied, slots)
        return averaged, copied

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class EMA(_Averaged):
    """An exponential moving average of a model's weights, usable in any training loop.

    ``ema = EMA(model, decay=0.999)`` copies the model (that copy is the average's starting point,
    as in timm); call ``ema.update(model)`` after each optimiser step and evaluate ``ema.module``.
    As a hook, ``fit(..., hooks=[ema])`` updates it after every step.

    ``every=n`` updates on every n-th call only (cheaper; the average then spans about
    ``n / (1 - decay)`` steps). ``warmup`` lowers the decay early on (see `ema_decay`).
    ``device`` keeps the average elsewhere (e.g. ``"cpu"`` to save accelerator memory).

    Difference from ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=
    get_ema_multi_avg_fn(decay))``: AveragedModel's first ``update_parameters`` copies the model
    and only later calls average; here the construction is that copy. So ``EMA`` made at step 1 and
    updated at steps 2..N equals AveragedModel updated at steps 1..N. AveragedModel's default
    (``use_buffers=False``) copies all buffers, like ``buffers="copy"`` here; its
    ``use_buffers=True`` also averages integer buffers (``num_batches_tracked``), which this never does.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        warmup_power: float = 2 / 3,
        every: int = 1,
        buffers: str = "copy",
        device: str | torch.device | None = None,
    ) -> None:
        if not (isinstance(decay, (int, float)) and 0.0 < decay < 1.0):
            raise ValueError(f"decay={decay!r}: must lie strictly between 0 and 1 (e.g. 0.999)")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r}: must be a whole number of steps >= 1")
        if not warmup_power > 0:
            raise ValueError(f"warmup_power={warmup_power}: must be > 0")
        super().__init__(model, buffers, device)
        self.decay, self.warmup, self.warmup_power, self.every = float(decay), warmup, warmup_power, every
        self.calls = 0  # update() calls, counted to honour ``every``
        self.updates = 0  # averaging steps actually taken

    @property
    def current_decay(self) -> float:
        """The decay the next averaging step will use."""
        return ema_decay(self.decay, self.updates, warmup=self.warmup, warmup_power=self.warmup_power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        averaged, copied = self._current(model)
        _lerp_(self._averaged, averaged, 1.0 - self.current_decay)  # = ema_update_, already under no_grad
        _copy_(self._copied, copied)
        self.updates += 1

    def on_step_end(self, state: Any) -> None:
        self.update(state.model)


class SWA(_Averaged):
    """A uniform (arithmetic-mean) average of a model's weights: stochastic weight averaging.

    ``swa = SWA(model)`` holds no sample yet; each ``swa.update(model)`` adds one, so after n updates
    ``swa.module`` holds the mean of those n weight vectors (as ``AveragedModel`` with its default
    average). As a `train.fit` hook it adds the weights at the end of every epoch from
    ``start_epoch`` (0-based: ``start_epoch=7`` averages after epochs 8, 9, ...). Train those epochs
    with the SWA learning rate (`schedules.Cosine` with ``min_lr=swa_lr`` over the first
    ``start_epoch`` epochs anneals to it and holds it), then call `recompute_batchnorm`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        start_epoch: int = 0,
        buffers: str = "copy",
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch={start_epoch!r}: must be a whole number >= 0")
        super().__init__(model, buffers, device)
        self.start_epoch = start_epoch
        self.num_averaged = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, copied = self._current(model)
        swa_update_(self._averaged, averaged, self.num_averaged)
        _copy_(self._copied, copied)
        self.num_averaged += 1

    def on_epoch_end(self, state: Any) -> None:
        if state.epoch >= self.start_epoch:
            self.update(state.model)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them over ``batches``.

    One pass in train mode with ``momentum=None`` (a cumulative mean over batches), like
    ``torch.optim.swa_utils.update_bn``. ``batches`` yields inputs or ``(inputs, labels)``; inputs
    move to the model's device. ``max_batches`` bounds the pass (cheap per-epoch estimates). A model
    without BatchNorm is returned untouched, without a pass. Returns ``model`` in its prior mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts equally
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model


class RecordAveraged:
    """A `train.fit` hook: evaluates an averaged copy at each epoch end into the history.

    Adds ``<name>_val_<metric>`` to the epoch's record, next to the raw model's ``val_<metric>``.
    ``prepare(module)`` runs first (e.g. a short BatchNorm recompute for SWA). Epochs before the
    averager holds a sample (SWA before its start) are skipped. Pass it after the averager in ``hooks``.
    """

    def __init__(
        self,
        name: str,
        averager: EMA | SWA,
        validate: Callable[[nn.Module], dict[str, float]],
        prepare: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        self.name, self.averager, self.validate, self.prepare = name, averager, validate, prepare

    def on_epoch_end(self, state: Any) -> None:
        if isinstance(self.averager, SWA) and self.averager.num_averaged == 0:
            return
        if self.prepare is not None:
            self.prepare(self.averager.module)
        metrics = self.validate(self.averager.module)
        state.history.epochs[-1].update({f"{self.name}_val_{k}": v for k, v in metrics.items()})


def plot_averaged_history(epochs: Sequence[dict[str, float]], path: str, *, metric: str = "accuracy", title: str = "") -> str:
    """PNG: validation ``metric`` per epoch of the raw weights and of each ``<name>_val_`` average."""
    from .report import new_figure, save_figure

    fig, ax = new_figure(figsize=(6, 3.5))
    keys = [k for k in epochs[0] if k.endswith(f"val_{metric}")] if epochs else []
    keys += [k for e in epochs for k in e if k.endswith(f"val_{metric}") and k not in keys]
    keys = list(dict.fromkeys(keys))
    for key in keys:
        points = [(e["epoch"], e[key]) for e in epochs if key in e]
        label = "raw weights" if key == f"val_{metric}" else key.split("_val_")[0].replace("_", " ")
        ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title or f"raw vs averaged weights: validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    return str(path)
