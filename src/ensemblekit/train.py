"""The one training loop. Every method (single model, ensemble member, snapshots, EMA, SWA,
dropout variants, occlusion training, Siamese pairs) trains through `fit`.

Read it top to bottom: per epoch, per batch: set the lr from the schedule, forward, loss, check it
is finite, backward, step, call the step hooks; at epoch end evaluate and call the epoch hooks.
Methods that need more (an EMA copy, snapshots at cycle ends) are hooks, not forks of the loop.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Batches, resolve_device
from .metrics import evaluate
from .schedules import SCHEDULES, Schedule, make_schedule

__all__ = [
    "Recipe",
    "TrainState",
    "Hook",
    "History",
    "TrainingError",
    "fit",
    "make_optimizer",
    "predict_logits",
    "predict_proba",
    "evaluate_model",
    "progress_enabled",
]

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How to train one model. Defaults suit the reference MLP on 28x28 images."""

    epochs: int = 10  # full passes over the training split
    batch_size: int = 128  # samples per optimiser step
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = 5e-4  # L2 for SGD, decoupled decay for AdamW
    schedule: str = "cosine"  # "constant", "step" or "cosine"
    warmup_epochs: float = 0.0  # linear warm-up length, in epochs
    min_lr: float = 0.0  # floor of the cosine schedule
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    seed: int = 0  # initial weights, batch order and dropout masks all follow from it
    data_seed: int | None = None  # batch order only, when it must differ from seed (ensemble members share one)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"  # "bf16": forward in bfloat16 autocast (AMX CPUs, recent GPUs); weights stay fp32

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r}: must be a whole number >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr={self.lr}: must be a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum}: must lie in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs}: must lie in [0, epochs={self.epochs}]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must lie in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr}: must lie in [0, lr={self.lr}]")

    def replace(self, **changes: Any) -> "Recipe":
        return Recipe(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_schedule(self, steps_per_epoch: int) -> Schedule:
        return make_schedule(
            self.schedule, lr=self.lr, total_steps=self.epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch, warmup_epochs=self.warmup_epochs, min_lr=self.min_lr,
        )


class TrainingError(RuntimeError):
    """Training diverged (a non-finite loss)."""


@dataclass
class TrainState:
    """What hooks see. ``step`` counts optimiser steps taken so far (1 after the first)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0
    lr: float = 0.0
    loss: float = float("nan")
    history: "History | None" = None


class Hook(Protocol):
    """Either method may be omitted. Hooks run in the order given to `fit`."""

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...


@dataclass
class History:
    """Per-epoch records (train loss/accuracy, validation metrics, seconds) and the per-step lr."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def last(self, key: str) -> float:
        return self.epochs[-1][key]

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "seconds": self.seconds}


def make_optimizer(params: Iterable[Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD or AdamW from the recipe, with torch's fused kernel where every parameter allows it.

    The fused kernel updates each tensor in one pass (weight decay, momentum and the step
    together) instead of three to five element-wise passes; the step is memory-bound, so this is
    ~3x faster than torch's default CPU path (wide 5-member MLP: 3.3 ms -> 1.1 ms per step).
    """
    params = list(params)
    fused = _can_fuse(params)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay, fused=fused,
        )
    return torch.optim.AdamW(params, lr=recipe.lr, betas=(recipe.momentum, 0.999),
                             weight_decay=recipe.weight_decay, fused=fused)


def _can_fuse(params: Sequence[Tensor]) -> bool | None:
    """True when torch's fused optimiser kernels cover all ``params`` (floating, dense, one device type)."""
    try:  # torch >= 2.4 lists the devices with fused kernels (CPU among them); older ones: none here
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:
        return None
    devices = {p.device.type for p in params}
    ok = len(devices) == 1 and devices <= supported and all(p.is_floating_point() and not p.is_sparse for p in params)
    return True if ok else None


def progress_enabled(progress: bool | None) -> bool:
    """None means: show progress only when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress


def fit(
    model: nn.Module,
    batches: Batches,
    recipe: Recipe,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    hooks: Sequence[Any] = (),
    schedule: Schedule | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool | None = None,
    description: str = "training",
) -> History:
    """Train ``model`` in place on ``batches`` following ``recipe``; return the `History`.

    ``loss_fn(outputs, targets)`` defaults to cross-entropy with the recipe's label smoothing.
    Inputs that are tuples (pairs) are unpacked into ``model(*inputs)``. ``validate(model)``
    returns metrics recorded each epoch under ``val_<name>``. ``schedule`` overrides the recipe's
    (snapshot ensembles pass a cyclic one). A non-finite loss raises `TrainingError` naming the
    epoch and step.
    """
    device = resolve_device(recipe.device)
    model.to(device)
    if batches.device != device:
        batches = batches.with_options(device=device)
    order_seed = recipe.seed if recipe.data_seed is None else recipe.data_seed
    if batches.seed is not None and batches.seed != order_seed:  # None: streams that carry their own orders
        batches = batches.with_options(seed=order_seed)
    if loss_fn is None:
        smoothing = recipe.label_smoothing
        loss_fn = lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ValueError(f"no batches: {batches.num_samples} samples with batch_size={batches.batch_size} and drop_last")
    schedule = schedule or recipe.make_schedule(steps_per_epoch)
    optimizer = optimizer or make_optimizer(model.parameters(), recipe)
    history = History()
    state = TrainState(model, optimizer, recipe, steps_per_epoch, recipe.epochs * steps_per_epoch, history=history)
    step_hooks = [h.on_step_end for h in hooks if hasattr(h, "on_step_end")]
    epoch_hooks = [h.on_epoch_end for h in hooks if hasattr(h, "on_epoch_end")]

    # bf16: matmuls and convolutions run in bfloat16 (AMX / tensor cores), weights and the
    # optimiser stay fp32, so no loss scaling is needed (bf16 has fp32's exponent range)
    autocast_on = recipe.precision == "bf16"
    if autocast_on and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16': {torch.cuda.get_device_name(device)} has no bfloat16 support; use precision='fp32'")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_on)
    torch.manual_seed(recipe.seed)  # dropout masks and other in-model noise follow the seed
    started = time.perf_counter()
    with _progress(progress, description, state.total_steps) as advance:
        for epoch in range(recipe.epochs):
            state.epoch = epoch
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen, classified = 0, 0
            for inputs, targets in batches.epoch(epoch):
                lr = schedule(state.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    outputs = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
                if autocast_on:  # the loss, its gradient and the accuracy count in fp32
                    outputs = _to_fp32(outputs)
                loss = loss_fn(outputs, targets)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at epoch {epoch + 1}, step {state.step + 1} "
                        f"(lr={lr:g}); lower the learning rate or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state.step += 1
                state.lr, state.loss = lr, loss_value
                history.lr.append(lr)
                n = targets.shape[-1] if targets.ndim == 2 and outputs.ndim == 3 else targets.shape[0]  # (K, B): K members' labels
                loss_sum += loss.detach() * n
                seen += n
                if outputs.ndim == 2 and targets.ndim == 1 and targets.dtype == torch.long:
                    correct += (outputs.detach().argmax(1) == targets).sum()
                    classified += n
                for hook in step_hooks:
                    hook(state)
                advance(f"epoch {epoch + 1}/{recipe.epochs} loss {loss_value:.3f}")
            record = {"epoch": epoch + 1, "train_loss": (loss_sum / seen).item()}
            if classified:
                record["train_accuracy"] = (correct / classified).item()
            if validate is not None:
                record.update({f"val_{k}": v for k, v in validate(model).items()})
            record["seconds"] = time.perf_counter() - started
            history.epochs.append(record)
            for hook in epoch_hooks:
                hook(state)
    history.seconds = time.perf_counter() - started
    model.eval()
    return history


def _to_fp32(outputs: Any) -> Any:
    """A model's outputs (a tensor or a tuple of them, as pair models return) with floats as fp32."""
    if isinstance(outputs, tuple):
        return tuple(_to_fp32(o) for o in outputs)
    return outputs.float() if isinstance(outputs, Tensor) and outputs.is_floating_point() else outputs


class _progress:
    """A rich progress bar over steps, or nothing when progress is off."""

    def __init__(self, enabled: bool | None, description: str, total: int) -> None:
        self.enabled = progress_enabled(enabled)
        self.description, self.total = description, total

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda status: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total, status="")
        return lambda status: self.bar.update(task, advance=1, status=status)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Logits (N, C) of ``model`` in eval mode, computed in chunks on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = [model(inputs[i : i + batch_size].to(device)) for i in range(0, inputs.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def predict_proba(model: nn.Module, inputs: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Softmax probabilities (N, C) in eval mode."""
    return predict_logits(model, inputs, batch_size=batch_size).softmax(dim=1)


def evaluate_model(model: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, float]:
    """`metrics.evaluate` of the model's eval-mode probabilities on normalised ``inputs``."""
    return evaluate(predict_proba(model, inputs), labels)
