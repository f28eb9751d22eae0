"""EMA update cost: ensemblekit's `EMA.update` against torch's `AveragedModel.update_parameters`.

Both sides do the same thing: an EMA of the parameters (one ``torch._foreach_lerp_``) and a copy of
the buffers (``use_buffers=False`` / ``buffers="copy"``), or an EMA of parameters and float
buffers (``use_buffers=True`` / ``buffers="average"``). The difference is the bookkeeping around
the kernel: AveragedModel walks the module tree, detaches, regroups by device and dtype and copies
buffers one by one on every call; `EMA` keeps its tensor lists and issues one foreach call per list.
Also measured: the EMA update as a fraction of one SGD training step (forward, backward, step).

Models: a deep CNN (SmallCNN, 4 blocks x 9 conv+BN = 36 conv layers, 112 parameter tensors,
72 float + 36 integer buffers) and the reference MLP 512-512 (6 parameter tensors).

Run: ``python bench/bench_averaging.py [--runs 7] [--updates 100] [--threads 1]``
Prints an evidence header (machine, torch, threads, runs, median) then one line per case with
the speed-up ratio (AveragedModel time / EMA time; target >= 2x) and the EMA overhead per step
(target <= 5%).

Evidence (idle 2-core Xeon, torch 2.13.0 CPU, median of 7 runs of 100 updates;
``--threads 2 --clock wall``, torch's default threads here):

    deep CNN  buffers=copy    EMA 118 us  AveragedModel  970 us  8.2x   overhead 0.12%
    deep CNN  buffers=average EMA 125 us  AveragedModel 1308 us  10.5x  overhead 0.13%
    MLP       buffers=copy    EMA  94 us  AveragedModel  196 us  2.10x  overhead 3.7%
    MLP       buffers=average EMA  94 us  AveragedModel  191 us  2.02x  overhead 3.7%

With one thread (the default, thread CPU time) the MLP gives 1.5x and 4.95%: both sides then
spend ~190 us in the same memory-bound lerp over 670k floats.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ensemblekit.averaging import EMA
from ensemblekit.models import MLP, SmallCNN
from evidence import CLOCKS as ALL_CLOCKS, header, median_seconds


# cpu: this thread's CPU time. With one torch thread all the work runs on it, and on a shared
# machine it leaves out the time the scheduler gives to other processes.
CLOCKS = {"cpu": ALL_CLOCKS["thread-cpu"], "wall": ALL_CLOCKS["wall"]}


def training_step(model: torch.nn.Module, batch: int, shape: tuple[int, ...]):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--updates", type=int, default=100, help="EMA updates per timed run")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared CPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: thread CPU time (default; robust on a shared machine, needs --threads 1); wall: perf_counter")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use --threads 1 or --clock wall")
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)

    cases = {
        "deep CNN": (SmallCNN((1, 28, 28), 10, channels=(8, 16, 16, 32), hidden=64, convs_per_block=9), (1, 28, 28)),
        "MLP 512-512": (MLP((1, 28, 28), 10), (1, 28, 28)),
    }
    print(header(
        "bench_averaging: EMA update vs torch AveragedModel.update_parameters",
        args.runs,
        "thread CPU time" if args.clock == "cpu" else "wall time",
        [f"each run the mean of {args.updates} updates ({args.steps} training steps); batch {args.batch_size}; device cpu"],
    ))
    for name, (model, shape) in cases.items():
        n_params = len(list(model.parameters()))
        n_buffers = len(list(model.buffers()))
        step_s = median_seconds(training_step(model, args.batch_size, shape), args.runs, clock=clock, repeat=args.steps)
        for policy, use_buffers in (("copy", False), ("average", True)):
            ours = EMA(model, 0.999, buffers=policy)
            reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=use_buffers)
            reference.update_parameters(model)  # the first call only copies
            ours_s = median_seconds(lambda: ours.update(model), args.runs, clock=clock, repeat=args.updates)
            ref_s = median_seconds(lambda: reference.update_parameters(model), args.runs, clock=clock, repeat=args.updates)
            print(
                f"{name:12s} ({n_params} params, {n_buffers} buffers) buffers={policy:7s}: "
                f"EMA {1e6 * ours_s:8.1f} us  AveragedModel {1e6 * ref_s:8.1f} us  ratio {ref_s / ours_s:5.2f}x "
                f"[target >= 2x]  | train step {1e3 * step_s:7.2f} ms, EMA overhead {100 * ours_s / step_s:5.2f}% "
                f"[target <= 5%]"
            )


if __name__ == "__main__":
    main()
