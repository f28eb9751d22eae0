"""The evidence every benchmark in ``bench/`` opens with, and the one timer they share.

A ratio means little without the machine it was measured on, so each benchmark prints
`header(...)` first: CPU model, cores, load average, python, torch, torch threads, runs, clock.
The benchmarks run as ``python bench/bench_<topic>.py`` from the repository root, which puts
``bench/`` on ``sys.path``: they ``import evidence`` directly.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["CLOCKS", "cpu_model", "load_average", "header", "median_seconds", "interleaved_medians"]

# Named clocks for a ``--clock`` option. CPU time leaves out the time the scheduler gives to other
# processes, so it is the steadier choice on a shared machine; thread CPU time counts only this
# thread and therefore needs one torch thread.
CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "process-cpu": time.process_time,
    "thread-cpu": time.thread_time,
}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or "n/a" where the OS has none."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def header(title: str, runs: int, clock_name: str, details: Iterable[str] = ()) -> str:
    """The evidence header, one ``# ``-prefixed line each; call it after ``torch.set_num_threads``.

    ``clock_name`` says what a timed run measures (e.g. "wall time"); ``details`` are extra lines
    about the workload (data, model, batch size).
    """
    lines = [
        title,
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores, load average {load_average()}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}",
        f"runs: {runs}, median reported, clock: {clock_name}",
        *details,
    ]
    return "\n".join(f"# {line}" for line in lines)


def median_seconds(
    fn: Callable[[], object],
    runs: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    repeat: int = 1,
) -> float:
    """Median over ``runs`` timed runs of the mean time of one call, after ``warmup`` untimed runs.

    A run is ``repeat`` calls of ``fn``; use ``repeat > 1`` when one call is too short for the
    clock's resolution (thread CPU time ticks in microseconds or coarser).
    """
    if runs < 1 or warmup < 0 or repeat < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, repeat >= 1; got runs={runs}, "
                         f"warmup={warmup}, repeat={repeat}")
    for _ in range(warmup * repeat):
        fn()
    times = []
    for _ in range(runs):
        start = clock()
        for _ in range(repeat):
            fn()
        times.append((clock() - start) / repeat)
    return statistics.median(times)


def interleaved_medians(
    fns: Sequence[Callable[[], object]],
    runs: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    block: int = 5,
) -> list[float]:
    """Median time of one call of each of ``fns``, timed in alternating blocks of ``block`` runs.

    Alternating puts every function under the same conditions, so a ratio of the medians holds when
    a shared machine speeds up or slows down during the benchmark, which timing all of one
    function's runs before the next does not. Each block starts with ``warmup`` untimed calls, so
    each function is timed in its steady state (warm caches and allocator), not in the state the
    other function left behind.
    """
    if runs < 1 or warmup < 0 or block < 1 or not fns:
        raise ValueError(f"need runs >= 1, warmup >= 0, block >= 1 and at least one function; got runs={runs}, "
                         f"warmup={warmup}, block={block}, {len(fns)} functions")
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < runs:
        for fn, spent in zip(fns, times):
            for _ in range(warmup):
                fn()
            for _ in range(min(block, runs - len(spent))):
                start = clock()
                fn()
                spent.append(clock() - start)
    return [statistics.median(spent) for spent in times]
