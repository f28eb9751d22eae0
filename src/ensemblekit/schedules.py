"""Learning-rate schedules as pure functions of the optimiser step.

Each schedule is a small frozen dataclass: ``schedule(step) -> lr``. Nothing is stateful, so a
schedule can be plotted, tested against torch's schedulers step by step, or resumed at any step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

__all__ = ["Schedule", "Constant", "StepDecay", "Cosine", "Warmup", "SCHEDULES", "make_schedule"]


class Schedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class Constant:
    lr: float

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True)
class StepDecay:
    """lr * gamma ** (number of milestones passed); milestones are step indices."""

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** sum(step >= m for m in self.milestones)


@dataclass(frozen=True)
class Cosine:
    """Half a cosine from ``lr`` at step 0 to ``min_lr`` at ``total_steps`` (Loshchilov & Hutter 2017)."""

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / max(self.total_steps, 1)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up from ~0 to the inner schedule over ``steps`` steps, then the inner schedule."""

    inner: Schedule
    steps: int

    def __call__(self, step: int) -> float:
        if step < self.steps:
            return self.inner(step) * (step + 1) / self.steps
        return self.inner(step)


SCHEDULES = ("constant", "step", "cosine")


def make_schedule(
    name: str,
    *,
    lr: float,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_epochs: Sequence[int] = (),
    step_gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Schedule:
    """The named schedule over ``total_steps`` steps, with an optional linear warm-up."""
    if name == "constant":
        schedule: Schedule = Constant(lr)
    elif name == "step":
        epochs = tuple(step_epochs) or (int(total_steps / steps_per_epoch * 0.5), int(total_steps / steps_per_epoch * 0.75))
        schedule = StepDecay(lr, tuple(e * steps_per_epoch for e in epochs), step_gamma)
    elif name == "cosine":
        schedule = Cosine(lr, total_steps, min_lr)
    else:
        raise ValueError(f"schedule {name!r} unknown; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return Warmup(schedule, warmup_steps) if warmup_steps > 0 else schedule
