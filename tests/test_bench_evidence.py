"""The timing helpers every benchmark in bench/ shares (bench/evidence.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from evidence import interleaved_medians, median_seconds  # noqa: E402


class FakeClock:
    """A clock that each timed function advances by its own fixed cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_medians_alternate_blocks_and_time_each_function():
    clock, calls = FakeClock(), []

    def work(name: str, cost: float):
        def run() -> None:
            calls.append(name)
            clock.now += cost
        return run

    medians = interleaved_medians([work("a", 3.0), work("b", 0.5)], runs=7, warmup=1, clock=clock, block=3)
    assert medians == [3.0, 0.5]
    # blocks of 1 warm-up + up to 3 timed calls, alternating, until each has 7 timed runs
    assert calls == list("aaaa" "bbbb" "aaaa" "bbbb" "aa" "bb")


def test_median_ignores_one_slow_run():
    clock, costs = FakeClock(), iter([1.0, 9.0, 1.0, 1.0, 1.0])

    def run() -> None:
        clock.now += next(costs)

    assert median_seconds(run, runs=5, warmup=0, clock=clock) == 1.0


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"block": 0}, {"warmup": -1}])
def test_interleaved_medians_reject_bad_settings(kwargs):
    settings = {"runs": 3, "warmup": 1, "block": 2} | kwargs
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        interleaved_medians([lambda: None], **settings)
