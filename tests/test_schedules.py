"""ensemblekit.schedules step by step against torch's own schedulers."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.schedules import SCHEDULES, Constant, Cosine, StepDecay, Warmup, make_schedule


def _torch_lrs(make_scheduler, lr: float, steps: int) -> list[float]:
    """The lr torch uses at each of ``steps`` optimiser steps (scheduler stepped after each)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("total, min_lr", [(10, 0.0), (37, 0.001), (1, 0.0)])
def test_cosine_equals_cosine_annealing_lr(total, min_lr):
    schedule = Cosine(0.1, total, min_lr)
    expected = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=min_lr), 0.1, total + 1
    )
    assert [schedule(s) for s in range(total + 1)] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert schedule(total) == pytest.approx(min_lr) and schedule(10 * total) == pytest.approx(min_lr)


@pytest.mark.parametrize("milestones, gamma", [((10, 20), 0.1), ((3, 3, 8), 0.5), ((), 0.1)])
def test_step_decay_equals_multi_step_lr(milestones, gamma):
    schedule = StepDecay(0.2, milestones, gamma)
    expected = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma), 0.2, 30
    )
    assert [schedule(s) for s in range(30)] == pytest.approx(expected, rel=1e-12)


def test_warmup_is_linear_then_the_inner_schedule():
    schedule = Warmup(Constant(1.0), 4)
    assert [schedule(s) for s in range(7)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])
    inner = Cosine(0.4, 20)
    warm = Warmup(inner, 5)
    ramp = [warm(s) / inner(s) for s in range(5)]
    assert ramp == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # a straight line scaling the inner lr
    assert [warm(s) for s in range(5, 21)] == [inner(s) for s in range(5, 21)]


def test_make_schedule():
    assert make_schedule("constant", lr=0.3, total_steps=10, steps_per_epoch=5) == Constant(0.3)
    assert make_schedule("cosine", lr=0.3, total_steps=10, steps_per_epoch=5, min_lr=0.01) == Cosine(0.3, 10, 0.01)
    # step: by default decays at 50% and 75% of training, on epoch boundaries
    assert make_schedule("step", lr=0.3, total_steps=40, steps_per_epoch=5) == StepDecay(0.3, (20, 30), 0.1)
    assert make_schedule("step", lr=0.3, total_steps=40, steps_per_epoch=5, step_epochs=(1, 2)) == StepDecay(0.3, (5, 10), 0.1)
    warm = make_schedule("cosine", lr=0.3, total_steps=10, steps_per_epoch=5, warmup_epochs=0.4)
    assert warm == Warmup(Cosine(0.3, 10), 2)
    with pytest.raises(ValueError, match="'linear'") as excinfo:
        make_schedule("linear", lr=0.3, total_steps=10, steps_per_epoch=5)
    assert all(name in str(excinfo.value) for name in SCHEDULES)
