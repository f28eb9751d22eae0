"""MC dropout, T copies stacked into the batch dimension vs a Python loop of T passes.

Peer: the loop everyone writes first — ``for t in range(T): p += model(x).softmax(1)`` with the
dropout modules in training mode. Ours: `ensemblekit.mc_dropout.MCDropout.predict_proba`, which
runs (T*B, ...) rows per forward (chunked to ``max_batch`` rows) and also returns entropy, mutual
information and variance. Model: the reference MLP 784-512-512-10 with inverted dropout 0.5 on
Fashion-MNIST test images; T = 50; B = 32 and 512.

Target (issue 5): at least 3x faster at B = 32, no slower at B = 512.

    python bench/bench_mc_dropout.py [--runs 15] [--samples 50] [--batch-sizes 32 512]
"""

from __future__ import annotations

import argparse

import torch

from ensemblekit.data import load
from ensemblekit.mc_dropout import MCDropout, dropout_train_mode
from ensemblekit.models import MLP
from evidence import header, median_seconds


@torch.no_grad()
def loop_of_passes(model: torch.nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    with dropout_train_mode(model):
        total = model(x).softmax(dim=1)
        for _ in range(samples - 1):
            total += model(x).softmax(dim=1)
    return total / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()

    print(header(
        "bench_mc_dropout: T MC-dropout samples stacked into the batch vs a loop of T passes",
        args.runs,
        "wall time",
        [f"MLP 784-512-512-10, inverted dropout 0.5, T={args.samples}, {args.dataset} test images; "
         "2 warm-up runs; device cpu"],
    ))
    splits = load(args.dataset)
    x_all = splits.inputs("test")
    model = MLP(splits.image_shape, splits.num_classes, hidden=(512, 512), dropout=0.5)
    print(f"{'B':>6} {'loop of T (ms)':>15} {'batched (ms)':>13} {'speed-up':>9}  target")
    for b in args.batch_sizes:
        x = x_all[:b]
        mc = MCDropout(model, args.samples)
        # same answer up to MC noise (sanity check, not the benchmark)
        gap = (mc.predict_proba(x) - loop_of_passes(model, x, args.samples)).abs().max().item()
        t_loop = median_seconds(lambda: loop_of_passes(model, x, args.samples), args.runs, warmup=2)
        t_batched = median_seconds(lambda: mc.predict_proba(x), args.runs, warmup=2)
        ratio = t_loop / t_batched
        target = 3.0 if b <= 32 else 1.0
        verdict = "ok" if ratio >= target else "MISSED"
        print(f"{b:>6} {1e3 * t_loop:>15.2f} {1e3 * t_batched:>13.2f} {ratio:>8.2f}x  >= {target:g}x {verdict}"
              f"   (max |p_batched - p_loop| = {gap:.3f}, MC noise)")


if __name__ == "__main__":
    main()
