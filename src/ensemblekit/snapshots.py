"""Snapshot ensembles (Huang et al. 2017): M models for the price of one training run.

Train one model with a cyclic cosine learning rate (`schedules.CosineRestarts`): each cycle falls
from a high lr into a (local) minimum, then the restart kicks the weights out again. Taking the
weights at each cycle end, where the lr is lowest, gives M different but good models; the last M
form an `ensemble.Ensemble` (mean of probabilities by default).

The budget-matched baseline is the same model trained for the same total epochs with one plain
cosine decay. Practical advice from the paper and from measuring here: snapshots need cycles long
enough to converge (too-short cycles give M weak models) and a high enough peak lr to diversify.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import nn

from .data import Batches
from .ensemble import Ensemble
from .schedules import CosineRestarts
from .train import History, Recipe, fit

__all__ = [
    "check_snapshot_plan",
    "snapshot_schedule",
    "SnapshotHook",
    "SnapshotRun",
    "train_snapshot_ensemble",
    "plot_lr_schedule",
]


def _cycle_epochs_sum(cycle_epochs: int, t_mult: int, cycles: int) -> int:
    return sum(cycle_epochs * t_mult**i for i in range(cycles))


def check_snapshot_plan(epochs: int, cycle_epochs: int, snapshots: int, t_mult: int = 1) -> int:
    """The number of cycles in ``epochs``; a ValueError saying what would fit if the plan is off.

    The cycles must fill the budget exactly (a snapshot is taken at each cycle end, and a cut-off
    last cycle would end at a high lr), and ``snapshots`` must not exceed the number of cycles.
    """
    if not isinstance(cycle_epochs, int) or cycle_epochs < 1:
        raise ValueError(f"cycle_epochs={cycle_epochs!r}: must be a whole number of epochs >= 1")
    if not isinstance(t_mult, int) or t_mult < 1:
        raise ValueError(f"t_mult={t_mult!r}: must be a whole number >= 1")
    if not isinstance(snapshots, int) or snapshots < 1:
        raise ValueError(f"snapshots={snapshots!r}: keep at least 1 snapshot")
    cycles, total = 0, 0
    while total < epochs:
        total += cycle_epochs * t_mult**cycles
        cycles += 1
    if total != epochs:
        below = _cycle_epochs_sum(cycle_epochs, t_mult, cycles - 1)
        if t_mult == 1:
            divisors = [d for d in range(1, epochs + 1) if epochs % d == 0]
            hint = f"cycles of {', '.join(map(str, divisors))} epochs fit {epochs} epochs"
        else:
            hint = f"t_mult={t_mult} cycles of {cycle_epochs} epochs fill {below} or {total} epochs"
        raise ValueError(
            f"cycle_epochs={cycle_epochs} does not fit epochs={epochs}: the last cycle would be cut "
            f"before its lr reaches the minimum; {hint}; or set epochs to {below or total} or {total}"
        )
    if snapshots > cycles:
        shorter = [d for d in range(1, epochs + 1) if epochs % d == 0 and epochs // d >= snapshots]
        hint = f"cycle_epochs={shorter[-1]} ({epochs // shorter[-1]} cycles)" if t_mult == 1 and shorter else "shorter cycles"
        raise ValueError(
            f"snapshots={snapshots} but epochs={epochs} with cycle_epochs={cycle_epochs} hold only {cycles} "
            f"cycle(s), one snapshot each: keep at most {cycles}, or use {hint}, "
            f"or more epochs (epochs={_cycle_epochs_sum(cycle_epochs, t_mult, snapshots)})"
        )
    return cycles


def snapshot_schedule(recipe: Recipe, steps_per_epoch: int, cycle_epochs: int, t_mult: int = 1) -> CosineRestarts:
    """The cyclic schedule: peak ``recipe.lr``, floor ``recipe.min_lr``, first cycle ``cycle_epochs``."""
    return CosineRestarts(recipe.lr, cycle_epochs * steps_per_epoch, t_mult, recipe.min_lr)


class SnapshotHook:
    """A `train.fit` hook: keeps a copy of the weights right after the last step of each cycle.

    Keeps the last ``keep`` snapshots (``.snapshots``, eval-mode copies, on ``device`` or the model's
    own) and the step count at which each was taken (``.steps``, all of them). With ``validate``
    (a function of an `Ensemble` returning metrics) the ensemble so far is scored at the epoch end
    after each snapshot, into the history as ``snapshot_ensemble_val_<metric>``.
    """

    def __init__(
        self,
        schedule: CosineRestarts,
        keep: int,
        *,
        device: str | None = None,
        combine: str = "mean_proba",
        validate: Callable[[Ensemble], dict[str, float]] | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least 1 snapshot")
        self.schedule, self.keep, self.device, self.combine, self.validate = schedule, keep, device, combine, validate
        self.snapshots: list[nn.Module] = []
        self.steps: list[int] = []
        self._new = False

    def on_step_end(self, state: Any) -> None:
        if not self.schedule.is_cycle_end(state.step):
            return
        snapshot = copy.deepcopy(state.model).eval().requires_grad_(False)
        if self.device is not None:
            snapshot.to(self.device)
        self.snapshots = (self.snapshots + [snapshot])[-self.keep :]
        self.steps.append(state.step)
        self._new = True

    def on_epoch_end(self, state: Any) -> None:
        if self._new and self.validate is not None:
            metrics = self.validate(self.ensemble())
            record = state.history.epochs[-1]
            record.update({f"snapshot_ensemble_val_{k}": v for k, v in metrics.items()})
            record["snapshots"] = len(self.snapshots)
        self._new = False

    def ensemble(self, combine: str | None = None) -> Ensemble:
        if not self.snapshots:
            raise ValueError("no snapshot yet: none of the cycles has ended")
        return Ensemble(self.snapshots, combine or self.combine)


@dataclass
class SnapshotRun:
    """What `train_snapshot_ensemble` returns."""

    ensemble: Ensemble
    history: History
    schedule: CosineRestarts
    snapshot_steps: list[int] = field(default_factory=list)
    steps_per_epoch: int = 1


def train_snapshot_ensemble(
    model: nn.Module,
    batches: Batches,
    recipe: Recipe,
    *,
    snapshots: int,
    cycle_epochs: int,
    t_mult: int = 1,
    combine: str = "mean_proba",
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    validate_ensemble: Callable[[Ensemble], dict[str, float]] | None = None,
    hooks: Sequence[Any] = (),
    progress: bool | None = None,
    description: str = "snapshots",
) -> SnapshotRun:
    """Train ``model`` for ``recipe.epochs`` with restarts every ``cycle_epochs``; the last
    ``snapshots`` cycle-end weights as an `Ensemble`. ``recipe.lr`` is each cycle's peak.

    Raises a ValueError before training if the cycles do not fill the epochs or there are fewer
    cycles than ``snapshots``. Extra ``hooks`` (an `averaging.EMA`, say) run after the snapshot hook.
    """
    check_snapshot_plan(recipe.epochs, cycle_epochs, snapshots, t_mult)
    steps_per_epoch = len(batches)
    schedule = snapshot_schedule(recipe, steps_per_epoch, cycle_epochs, t_mult)
    hook = SnapshotHook(schedule, snapshots, combine=combine, validate=validate_ensemble)
    history = fit(
        model, batches, recipe, validate=validate, hooks=[hook, *hooks], schedule=schedule,
        progress=progress, description=description,
    )
    return SnapshotRun(hook.ensemble(), history, schedule, list(hook.steps), steps_per_epoch)


def plot_lr_schedule(
    lr: Sequence[float],
    path: str,
    *,
    steps_per_epoch: int,
    snapshot_steps: Sequence[int] = (),
    compare: dict[str, Sequence[float]] | None = None,
    title: str = "",
) -> str:
    """PNG: the lr per step (x in epochs), a marker where each snapshot was taken.

    ``snapshot_steps`` are step counts (a snapshot after step s is drawn at the lr of step s).
    ``compare`` adds other lr curves (e.g. the single model's cosine) as dashed lines.
    """
    from .report import new_figure, save_figure

    fig, ax = new_figure(figsize=(7, 3.2))
    epochs = [(i + 1) / steps_per_epoch for i in range(len(lr))]
    ax.plot(epochs, lr, label="snapshot (cyclic cosine)" if snapshot_steps else "lr", linewidth=1.2)
    for name, other in (compare or {}).items():
        ax.plot([(i + 1) / steps_per_epoch for i in range(len(other))], other, "--", label=name, linewidth=1)
    if snapshot_steps:
        xs = [s / steps_per_epoch for s in snapshot_steps]
        ys = [lr[s - 1] for s in snapshot_steps]
        ax.plot(xs, ys, "v", color="crimson", markersize=8, label="snapshot taken")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title or "learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    save_figure(fig, path)
    return str(path)
