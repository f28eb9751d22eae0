"""Benchmark: training a 5-member MLP ensemble, ensemblekit vs torchensemble's VotingClassifier.

Peer: torchensemble 0.2.0 ``VotingClassifier`` (soft voting). Its PyPI metadata asks for
torchvision, which it does not need to import, so install it without dependencies::

    pip install --no-deps torchensemble
    python bench/bench_ensemble.py                 # both cases, 3 runs each, median
    python bench/bench_ensemble.py --case a --runs 5

Both sides get the same architecture (ensemblekit's `MLP`), data (pre-normalised float tensors
for torchensemble's DataLoader; ensemblekit cuts and normalises uint8 batches itself), epochs,
batch size and optimizer (SGD, lr 0.05, momentum 0.9, no Nesterov, weight decay 5e-4, constant
lr), in one process, one after the other. Cases (issue 3):

- (a) digits, MLP 64-128-10, 5 members, 20 epochs, batch 64: target >= 3x faster.
- (b) Fashion-MNIST, MLP 784-512-512-10, 5 members, 3 epochs, batch 128: target >= 1.4x faster,
  and achieved training GFLOP/s / GFLOP/s of a 2048x2048 float32 matmul (target >= 0.8). FLOPs
  per sample and linear layer (fan-in a, fan-out b): 2ab forward + 2ab weight gradient + 2ab
  input gradient (none for the first layer).

ensemblekit is timed both vectorised (one wide network; what ``vectorize="auto"`` picks for MLPs)
and one by one (``vectorize="off"``); that pair is the measurement behind ``auto``. Both use
``shared_order=False``: each member shuffles on its own, as torchensemble's members do. Case (b)
also runs the wide path with ``precision="bf16"`` (autocast; AMX on this CPU).

Evidence (idle machine: Intel Xeon with AVX-512 and AMX, 2 cores, torch 2.13.0 CPU, torch's
default 2 threads, 3 runs, median; ``python bench/bench_ensemble.py``):

    case (a): digits, MLP 64-128-10, 5 members, 20 epochs, batch 64
              wide:    0.26 s   test accuracy 96.94%
        one-by-one:    0.69 s   test accuracy 96.94%
     torchensemble:    1.01 s   test accuracy 96.66%
    speed-up vs torchensemble: wide 3.93x (target 3x), one-by-one 1.47x
    case (b): fashion-mnist, MLP 784-512-512-10, 5 members, 3 epochs, batch 128
              wide:   12.70 s   test accuracy 88.06%
        one-by-one:   14.02 s   test accuracy 88.15%
     torchensemble:   18.17 s   test accuracy 87.97%
         wide bf16:    7.99 s   test accuracy 88.10%
    speed-up vs torchensemble: wide 1.43x (target 1.4x), bf16 2.27x
    GFLOP/s over the 2048x2048 float32 matmul (390 GFLOP/s): wide 0.52, wide bf16 0.83 (target
    0.8), one-by-one 0.48, torchensemble 0.37

In fp32 the batched matmuls alone run at ~0.70 of the 2048x2048 rate at batch 128 (profile of
the wide path), so 0.8 needs the bf16 path; see docs/ensembles.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from ensemblekit import Recipe, load
from ensemblekit.ensemble import Ensemble, train_members
from ensemblekit.metrics import accuracy
from ensemblekit.models import MLP
from evidence import header, median_seconds

CASES = {
    "a": dict(dataset="digits", hidden=[128], members=5, epochs=20, batch_size=64),
    "b": dict(dataset="fashion-mnist", hidden=[512, 512], members=5, epochs=3, batch_size=128),
}
OPTIMIZER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def train_flops(in_features: int, hidden: list[int], classes: int, samples: int) -> float:
    """2ab forward + 2ab weight grad + 2ab input grad per sample and layer (no input grad for layer 1)."""
    widths = [in_features, *hidden, classes]
    per_sample = 0
    for j, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        per_sample += 2 * a * b * (2 if j == 0 else 3)
    return float(per_sample) * samples


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats, warmup=1) / 1e9


def run_ensemblekit(splits: Any, case: dict, vectorize: str, seed: int, precision: str = "fp32") -> tuple[float, float]:
    config = {"arch": "mlp", "in_shape": list(splits.image_shape), "num_classes": splits.num_classes, "hidden": case["hidden"]}
    recipe = Recipe(epochs=case["epochs"], batch_size=case["batch_size"], optimizer="sgd", nesterov=False,
                    schedule="constant", seed=seed, device="cpu", precision=precision, **OPTIMIZER)
    start = time.perf_counter()
    # shared_order=False: each member shuffles on its own, as torchensemble's members do (each
    # iterates its own pass over a shuffling DataLoader); with a constant lr a shared order makes
    # the members nearly identical and costs the ensemble about a point here
    trained = train_members(config, splits.batches("train", batch_size=case["batch_size"]), recipe,
                            members=case["members"], vectorize=vectorize, shared_order=False, progress=False)
    seconds = time.perf_counter() - start
    return seconds, accuracy(trained.ensemble.predict_proba(splits.inputs("test")), splits.test.labels)


def run_torchensemble(splits: Any, case: dict, seed: int) -> tuple[float, float]:
    from torchensemble import VotingClassifier

    kwargs = dict(in_shape=list(splits.image_shape), num_classes=splits.num_classes, hidden=case["hidden"])

    class Member(MLP):  # torchensemble instantiates the class once per member
        def __init__(self) -> None:
            super().__init__(**kwargs)

    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(splits.inputs("train"), splits.train.labels),
                        batch_size=case["batch_size"], shuffle=True)
    model = VotingClassifier(estimator=Member, n_estimators=case["members"], cuda=False)
    model.set_optimizer("SGD", **OPTIMIZER)
    start = time.perf_counter()
    model.fit(loader, epochs=case["epochs"], log_interval=10**9, save_model=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        proba = Ensemble(list(model.estimators_)).predict_proba(splits.inputs("test"))
    return seconds, accuracy(proba, splits.test.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["a", "b", "all"], default="all")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)

    print(header("bench_ensemble: 5-member MLP ensemble training vs torchensemble VotingClassifier",
                 args.runs, "wall time", ["device cpu; each run trains wide, one-by-one, torchensemble in turn"]))
    # untimed warm-up, one epoch of case (a) per path: the first optimiser pulls in torch._dynamo
    # (seconds, once per process) and autocast / torchensemble have one-off set-up costs too
    digits, warm = load("digits"), {**CASES["a"], "epochs": 1}
    with contextlib.redirect_stdout(io.StringIO()):
        for precision in ("fp32", "bf16"):
            run_ensemblekit(digits, warm, "on", 0, precision)
        run_ensemblekit(digits, warm, "off", 0)
        run_torchensemble(digits, warm, 0)
    for name in (["a", "b"] if args.case == "all" else [args.case]):
        case = CASES[name]
        splits = load(case["dataset"])
        runners = {
            "wide": lambda run: run_ensemblekit(splits, case, "on", run),
            "one-by-one": lambda run: run_ensemblekit(splits, case, "off", run),
            "torchensemble": lambda run: run_torchensemble(splits, case, run),
        }
        if name == "b":  # bfloat16 autocast: the AMX / tensor-core path (same FLOPs, cheaper ones)
            runners["wide bf16"] = lambda run: run_ensemblekit(splits, case, "on", run, precision="bf16")
        times: dict[str, list[float]] = {k: [] for k in runners}
        accs: dict[str, list[float]] = {k: [] for k in runners}
        for run in range(args.runs):
            for label, runner in runners.items():
                with contextlib.redirect_stdout(io.StringIO()):  # torchensemble prints per epoch
                    seconds, acc = runner(run)
                times[label].append(seconds)
                accs[label].append(acc)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n## case ({name}): {case['dataset']}, MLP {'-'.join(map(str, [splits.image_shape[0] * splits.image_shape[1] * splits.image_shape[2], *case['hidden'], splits.num_classes]))}, "
              f"{case['members']} members, {case['epochs']} epochs, batch {case['batch_size']}")
        for label in times:
            print(f"{label:>14}: {med[label]:7.2f} s   test accuracy {100 * statistics.median(accs[label]):.2f}% "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times[label])} s)")
        print(f"speed-up vs torchensemble: wide {med['torchensemble'] / med['wide']:.2f}x, "
              f"one-by-one {med['torchensemble'] / med['one-by-one']:.2f}x; wide vs one-by-one "
              f"{med['one-by-one'] / med['wide']:.2f}x")
        if name == "b":
            in_features = splits.image_shape[0] * splits.image_shape[1] * splits.image_shape[2]
            flops = train_flops(in_features, case["hidden"], splits.num_classes, len(splits.train)) * case["epochs"] * case["members"]
            peak = matmul_gflops()
            for label in ("wide", "wide bf16", "one-by-one", "torchensemble"):
                achieved = flops / med[label] / 1e9
                print(f"{label:>14}: {achieved:6.1f} GFLOP/s = {achieved / peak:.2f} x the 2048x2048 float32 matmul "
                      f"({peak:.1f} GFLOP/s); {med['torchensemble'] / med[label]:.2f}x torchensemble's speed")
            print(f"training FLOPs {flops / 1e12:.3f} TFLOP (2ab forward + 2ab weight grad + 2ab input grad, none for layer 1)")


if __name__ == "__main__":
    main()
