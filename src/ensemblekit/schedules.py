"""Learning-rate schedules as pure functions of the optimiser step.

Each schedule is a small frozen dataclass: ``schedule(step) -> lr``. Nothing is stateful, so a
schedule can be plotted, tested against torch's schedulers step by step, or resumed at any step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

__all__ = [
    "Schedule", "Constant", "StepDecay", "Cosine", "Warmup", "CosineRestarts", "SCHEDULES", "make_schedule",
]


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


@dataclass(frozen=True)
class CosineRestarts:
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017), per optimiser step.

    Cycle i lasts ``cycle_steps * t_mult**i`` steps; inside it the lr falls along half a cosine
    from ``lr`` to (almost) ``min_lr``, then jumps back to ``lr``. Equal step by step to
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cycle_steps, T_mult=t_mult,
    eta_min=min_lr)`` stepped once per optimiser step. Snapshot ensembles (Huang et al. 2017) take
    the weights at each cycle end, where the lr is lowest: `cycle_ends` lists those step counts.
    """

    lr: float
    cycle_steps: int  # T_0: length of the first cycle, in optimiser steps
    t_mult: int = 1  # T_mult: each cycle is this many times longer than the one before
    min_lr: float = 0.0  # eta_min: the floor each cycle anneals towards

    def __post_init__(self) -> None:
        if not isinstance(self.cycle_steps, int) or self.cycle_steps < 1:
            raise ValueError(f"cycle_steps={self.cycle_steps!r}: must be a whole number >= 1")
        if not isinstance(self.t_mult, int) or self.t_mult < 1:
            raise ValueError(f"t_mult={self.t_mult!r}: must be a whole number >= 1 (as in torch)")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr}: must lie in [0, lr={self.lr}]")

    def cycle_start(self, cycle: int) -> int:
        """The step at which cycle ``cycle`` (0-based) begins: T_0 * (t_mult**i - 1) / (t_mult - 1)."""
        if self.t_mult == 1:
            return self.cycle_steps * cycle
        return self.cycle_steps * (self.t_mult**cycle - 1) // (self.t_mult - 1)

    def position(self, step: int) -> tuple[int, int, int]:
        """(cycle index, steps into that cycle, that cycle's length) for a 0-based ``step``."""
        if self.t_mult == 1:
            cycle = step // self.cycle_steps
        else:  # invert cycle_start; the loop fixes float rounding of the log
            cycle = int(math.log(step * (self.t_mult - 1) / self.cycle_steps + 1, self.t_mult))
            while self.cycle_start(cycle + 1) <= step:
                cycle += 1
            while self.cycle_start(cycle) > step:
                cycle -= 1
        return cycle, step - self.cycle_start(cycle), self.cycle_steps * self.t_mult**cycle

    def __call__(self, step: int) -> float:
        _, t_cur, t_i = self.position(step)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t_cur / t_i))

    def cycle_ends(self, total_steps: int) -> tuple[int, ...]:
        """Step counts (steps taken so far) at which a cycle has just finished, up to ``total_steps``."""
        ends, cycle = [], 1
        while self.cycle_start(cycle) <= total_steps:
            ends.append(self.cycle_start(cycle))
            cycle += 1
        return tuple(ends)

    def is_cycle_end(self, steps_taken: int) -> bool:
        """True right after the last step of a cycle (``steps_taken`` counts steps, 1 after the first)."""
        if steps_taken < 1:
            return False
        cycle, t_cur, _ = self.position(steps_taken)
        return t_cur == 0


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
