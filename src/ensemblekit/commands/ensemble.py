"""`ensemblekit ensemble`: train K members, compare each member, the mean member and the ensemble."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..ensemble import COMBINE_RULES, VECTORIZE_MODES, evaluate_members, plot_size_curve, train_members
from ..report import format_metric, print_table
from .common import (
    add_training_arguments, add_output_arguments, console,
    err_console, finish, load_from_args, model_config_from_args, proba_row, recipe_from_args,
)

NAME = "ensemble"
HELP = "train K independent members and measure the ensemble's extra performance"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    group = parser.add_argument_group("ensemble")
    group.add_argument("--members", type=int, default=5, help="number of members K (default 5)")
    group.add_argument("--combine", choices=COMBINE_RULES, default="mean_proba",
                       help="combination rule (default mean_proba); 'weighted' fits weights on the validation split")
    group.add_argument("--vectorize", choices=VECTORIZE_MODES, default="auto",
                       help="train MLP members as one wide network: auto (default), on, off")
    group.add_argument("--bootstrap", action="store_true", help="bagging: each member trains on its own resample")
    group.add_argument("--own-order", action="store_true", help="each member shuffles with its own seed (default: shared batch order)")
    group.add_argument("--all-rules", action="store_true", help="also print a row for every combination rule")
    group.add_argument("--out", metavar="DIR", default=None,
                       help="save the ensemble (safetensors + manifest.json) and its size-curve PNG here")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.members < 1:
        raise ValueError(f"--members {args.members}: an ensemble needs at least 1 member")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a directory")
    recipe = recipe_from_args(args)
    splits = load_from_args(args)
    config = model_config_from_args(args, splits)
    if args.combine == "weighted" and not len(splits.val):
        raise ValueError("--combine weighted fits weights on the validation split, which is empty (--val-size 0)")
    progress = None if not args.quiet else False
    x_test, y_test = splits.inputs("test"), splits.test.labels

    def report_member(i: int, model: Any, history: Any) -> None:
        if args.quiet:
            return
        from ..train import evaluate_model

        acc = evaluate_model(model, x_test, y_test)["accuracy"]
        err_console.print(f"member {i + 1}/{args.members}: test accuracy {100 * acc:.2f}% ({history.seconds:.1f} s)")

    trained = train_members(
        config, splits.batches("train", batch_size=recipe.batch_size), recipe, members=args.members,
        shared_order=not args.own_order, bootstrap=args.bootstrap, vectorize=args.vectorize,
        progress=progress, on_member_end=report_member,
    )
    ensemble = trained.ensemble
    if args.combine == "weighted":
        ensemble.fit_weights(splits.inputs("val"), splits.val.labels)
    elif args.combine != ensemble.combine:
        ensemble = ensemble.with_combine(args.combine)
    if not args.quiet:
        how = "as one wide network" if trained.vectorized else "one by one"
        err_console.print(f"trained {args.members} members {how} in {trained.seconds:.1f} s")

    evaluations = {s: evaluate_members(ensemble, splits.inputs(s), splits[s].labels)
                   for s in ("val", "test") if len(splits[s])}
    rows = ensemble_rows(evaluations, label=f"ensemble ({args.members}, {ensemble.combine})")
    if args.all_rules:
        for rule in COMBINE_RULES:
            if rule == ensemble.combine:
                continue
            if rule == "weighted":
                if not len(splits.val):
                    continue
                other = ensemble.with_combine("mean_proba")
                other.fit_weights(splits.inputs("val"), splits.val.labels)
            else:
                other = ensemble.with_combine(rule)
            rows.append(proba_row(f"  combine={rule}", other.predict_proba, splits, tuple(evaluations)))

    test = evaluations["test"]
    notes = [extra_performance_line(test)]
    if ensemble.weights is not None:
        notes.append("fitted weights: " + ", ".join(f"{w:.3f}" for w in ensemble.weights.tolist()))
    curve = test["size_curve"]
    print_table([{"name": f"k = {r['k']}", "test": r} for r in curve], title="ensemble size curve (first k members)",
                console=console)
    if args.out:
        out = Path(args.out)
        ensemble.save(out, splits=splits, metrics={s: e["ensemble"] for s, e in evaluations.items()},
                      extra={"dataset": splits.name, "recipe": recipe.to_dict(), "member_seeds": trained.seeds})
        plot = plot_size_curve(curve, out / "size_curve.png", title=f"{args.members} x {args.model} on {splits.name}")
        notes.append(f"saved the ensemble to {out}/ (predict with: ensemblekit predict {out} --dataset {splits.name}); plot {plot}")
    return finish(
        args, rows, title=f"{args.members} x {args.model} on {splits.name}, {recipe.epochs} epochs each",
        notes=notes, dataset=splits.describe(), recipe=recipe.to_dict(), model=config,
        members=args.members, member_seeds=trained.seeds, vectorized=trained.vectorized,
        seconds=trained.seconds, combine=ensemble.combine,
        weights=None if ensemble.weights is None else ensemble.weights.tolist(),
        extra_performance=test["extra_performance"], diversity=test["diversity"], size_curve=curve,
    )


def ensemble_rows(evaluations: dict[str, dict[str, Any]], *, label: str) -> list[dict[str, Any]]:
    """Rows member 1..K, mean member, ensemble from `evaluate_members` results per split."""
    splits = list(evaluations)
    k = len(evaluations[splits[0]]["members"])
    rows = [{"name": f"member {i + 1}", **{s: evaluations[s]["members"][i] for s in splits}} for i in range(k)]
    rows.append({"name": "mean member", **{s: evaluations[s]["mean_member"] for s in splits}})
    rows.append({"name": label, **{s: evaluations[s]["ensemble"] for s in splits}})
    return rows


def extra_performance_line(evaluation: dict[str, Any]) -> str:
    """'extra performance: ensemble 91.30% - mean member 90.85% = +0.45 pt; ...' for the test split."""
    ens, mean, best = evaluation["ensemble"], evaluation["mean_member"], evaluation["best_member"]
    d = evaluation["diversity"]
    nll_change = 100 * (ens["nll"] - mean["nll"]) / mean["nll"] if mean["nll"] else 0.0
    return (
        f"extra performance: ensemble {format_metric('accuracy', ens['accuracy'])} - mean member "
        f"{format_metric('accuracy', mean['accuracy'])} = {100 * evaluation['extra_performance']:+.2f} pt "
        f"(best member {format_metric('accuracy', best['accuracy'])}); NLL {ens['nll']:.4f} vs mean member "
        f"{mean['nll']:.4f} ({nll_change:+.1f}%); mean pairwise disagreement {100 * d['disagreement']:.2f}%"
    )


def demo_row(splits: Any, recipe: Any, progress: bool | None) -> dict[str, Any]:
    """`ensemblekit demo`'s row: 5 demo MLPs trained as one wide network, mean of probabilities."""
    from .demo import mlp_config

    trained = train_members(mlp_config(splits), splits.batches("train", batch_size=recipe.batch_size), recipe,
                            members=5, progress=progress)
    return proba_row("ensemble of 5 MLPs", trained.ensemble.predict_proba, splits)
