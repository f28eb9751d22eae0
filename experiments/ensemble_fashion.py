"""Must-show for model ensembles: 5 small CNNs on Fashion-MNIST, each good alone, over 3 seeds.

    python experiments/ensemble_fashion.py --seeds 0 1 2 --out runs/ensemble/must_show

Each seed trains 5 `SmallCNN(channels=(32, 64))` members (SGD lr 0.05, Nesterov, cosine, 4 epochs,
batch 128; member i seeded by member_seed(seed, i), shared batch order) and writes
``<out>/seed<S>.json`` as soon as it finishes, then ``<out>/summary.json`` with the gain over the
mean member (mean and std over the seeds that finished). Equivalent CLI, one seed:
``ensemblekit ensemble --dataset fashion-mnist --model cnn --members 5 --epochs 4 --seed S``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ensemblekit import Recipe, load
from ensemblekit.ensemble import evaluate_members, plot_size_curve, train_members
from ensemblekit.report import write_json

RECIPE = Recipe(epochs=4, batch_size=128, optimizer="sgd", lr=0.05, schedule="cosine", device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--out", default="runs/ensemble/must_show")
    args = parser.parse_args()
    out = Path(args.out)
    splits = load("fashion-mnist")
    config = {"arch": "cnn", "in_shape": list(splits.image_shape), "num_classes": splits.num_classes, "channels": [32, 64]}
    recipe = RECIPE.replace(epochs=args.epochs)
    x_test, y_test = splits.inputs("test"), splits.test.labels
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        trained = train_members(config, splits.batches("train", batch_size=recipe.batch_size), recipe,
                                members=args.members, seed=seed, vectorize="off", progress=False)
        ev = evaluate_members(trained.ensemble, x_test, y_test)
        try:  # a checkpoint of every seed's ensemble, for `ensemblekit predict`
            trained.ensemble.save(out / f"seed{seed}_ensemble", splits=splits, metrics={"test": ev["ensemble"]})
        except Exception as exc:  # the numbers matter more than the checkpoint
            print(f"seed {seed}: checkpoint not written ({exc})", flush=True)
        plot_size_curve(ev["size_curve"], out / f"seed{seed}_size_curve.png", title=f"Fashion-MNIST, 5 CNNs, seed {seed}")
        accs = [m["accuracy"] for m in ev["members"]]
        nlls = [m["nll"] for m in ev["members"]]
        record = {
            "seed": seed, "seconds": time.perf_counter() - started, "recipe": recipe.to_dict(), "config": config,
            "member_seeds": trained.seeds, **ev,
            "checks": {
                "every_member_at_least_90.5": min(accs) >= 0.905,
                "ensemble_beats_best_member": ev["ensemble"]["accuracy"] > max(accs),
                "ensemble_nll_below_every_member": ev["ensemble"]["nll"] < min(nlls),
            },
        }
        write_json(out / f"seed{seed}.json", record)
        results.append(record)
        print(f"seed {seed}: members {[round(100 * a, 2) for a in accs]} ensemble {100 * ev['ensemble']['accuracy']:.2f} "
              f"gain {100 * ev['extra_performance']:+.2f} pt, NLL {ev['ensemble']['nll']:.4f} vs members "
              f"{[round(n, 4) for n in nlls]}, {record['seconds']:.0f} s, checks {record['checks']}", flush=True)
    gains = [100 * r["extra_performance"] for r in results]
    summary = {
        "seeds": [r["seed"] for r in results],
        "gain_pt_mean": statistics.mean(gains),
        "gain_pt_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "gains_pt": gains,
        "ensemble_accuracy": [r["ensemble"]["accuracy"] for r in results],
        "mean_member_accuracy": [r["mean_member"]["accuracy"] for r in results],
        "nll_reduction_pct": [100 * r["diversity"]["nll_gain"] / r["mean_member"]["nll"] for r in results],
        "all_checks": all(all(r["checks"].values()) for r in results),
    }
    write_json(out / "summary.json", summary)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
