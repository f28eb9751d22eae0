"""One epoch of pure iteration over Fashion-MNIST train (60,000 images) at batch 128:
`ensemblekit.data.Batches` (index_select on a seeded permutation, normalised per batch) against
`torch.utils.data.DataLoader(TensorDataset(normalised float images, labels), shuffle=True)`
(60,000 __getitem__ calls and a collate per batch). Target: Batches at least 5x faster.

The DataLoader gets the easier job: its images are normalised once up front, while Batches
normalises each uint8 batch as it cuts it (what training uses).

    python bench/bench_loader.py [--runs 7] [--batch-size 128] [--dataset fashion-mnist] [--threads N]

On a machine shared with other busy processes, torch's intra-op threads can stall each other on
the small per-batch ops (an epoch of Batches then takes seconds); `--threads 1` avoids that.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from ensemblekit import data
from evidence import header


def one_epoch(iterable) -> tuple[float, int]:
    """Seconds for one full pass, and the number of samples seen (touching every batch)."""
    started = time.perf_counter()
    seen = 0
    for x, y in iterable:
        seen += y.shape[0]
    return time.perf_counter() - started, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed epochs per loader (default 7)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    splits = data.load(args.dataset, val_size=0)  # the whole training file
    train = splits.train
    batches = splits.batches("train", batch_size=args.batch_size, seed=0)
    dataset = TensorDataset(splits.inputs("train"), train.labels)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    # warm-up pass each, then alternate so load on a shared machine hits both alike
    one_epoch(batches.epoch(0))
    one_epoch(loader)
    ours, theirs = [], []
    for run in range(args.runs):
        seconds, n = one_epoch(batches.epoch(run + 1))
        assert n == len(train)
        ours.append(seconds)
        seconds, n = one_epoch(loader)
        assert n == len(train)
        theirs.append(seconds)

    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(header(
        f"bench_loader: one epoch of iteration, {args.dataset} train",
        args.runs,
        "wall time",
        [f"data: {args.dataset} train, {len(train)} images {tuple(train.images.shape[1:])}, "
         f"batch {args.batch_size}, {len(batches)} batches, device {batches.device}",
         "one warm-up epoch per loader, then the two loaders alternate (shared load hits both alike)"],
    ))
    print(f"ensemblekit Batches         median {ours_median * 1e3:9.1f} ms/epoch  "
          f"(min {min(ours) * 1e3:.1f}, max {max(ours) * 1e3:.1f})")
    print(f"DataLoader(TensorDataset)   median {theirs_median * 1e3:9.1f} ms/epoch  "
          f"(min {min(theirs) * 1e3:.1f}, max {max(theirs) * 1e3:.1f})")
    ratio = theirs_median / ours_median
    print(f"ratio: Batches is {ratio:.1f}x faster than DataLoader (target >= 5x): {'met' if ratio >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
