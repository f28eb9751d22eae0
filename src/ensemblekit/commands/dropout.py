"""`ensemblekit dropout`: no dropout vs vanilla vs inverted, weight scaling vs MC dropout; or, with
``--exact``, a small net whose one dropout layer is enumerated as the exact ensemble of 2^n masks."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any, Sequence

import torch
from rich.markup import escape
from torch import Tensor, nn

from ..dropout import make_dropout
from ..dropout_exact import ensemble_gaps, exact_ensemble, split_at_dropout, two_input_example, weight_scaling
from ..mc_dropout import MCDropout, predictive_entropy, summarize
from ..metrics import evaluate, roc_auc
from ..models import build_model
from ..report import new_figure, save_figure
from ..train import Recipe, fit, predict_proba
from .common import (
    add_data_arguments, add_output_arguments, add_recipe_arguments, console, finish, load_from_args, proba_row,
    recipe_from_args,
)

NAME = "dropout"
HELP = "vanilla vs inverted dropout, weight scaling vs MC dropout (--exact: the 2^n-mask ensemble)"

DEFAULTS = Recipe(epochs=20, batch_size=128, lr=0.05, weight_decay=5e-4, schedule="cosine")
LEGEND = (
    "WS: weight scaling (one deterministic pass); MC T: mean of T stochastic passes; acc std pp: standard "
    "deviation of accuracy over seeds in percentage points; H / MI AUROC: predictive entropy / mutual "
    "information (BALD) as a score for detecting misclassified test images"
)
VARIANTS = (("no dropout", "inverted", False), ("vanilla", "vanilla", True), ("inverted", "inverted", True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, default="fashion-mnist")
    group = parser.add_argument_group("dropout")
    group.add_argument("--exact", action="store_true", help="run the exact-enumeration demo instead")
    group.add_argument("--drop", type=float, default=0.3, help="drop probability (keep = 1 - drop; default 0.3)")
    group.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="MLP hidden widths (default 512 512)")
    group.add_argument("--seeds", type=int, default=3, help="models per variant, seeds --seed, --seed+1, ... (default 3)")
    group.add_argument("--samples", type=int, nargs="+", default=None,
                       help="MC dropout T values (default 1 2 5 10 20 50; --exact: 1 10 100 1000); the table shows the largest")
    group.add_argument("--plot", default="dropout_vs_T.png", help="accuracy and NLL against T, PNG (default %(default)s; 'none' to skip)")
    group.add_argument("--units", type=int, default=16, help="--exact: units in the enumerated dropout layer, <= 20 (default 16)")
    group.add_argument("--kind", choices=("vanilla", "inverted"), default="inverted", help="--exact: dropout kind (default inverted)")
    group.add_argument("--exact-inputs", type=int, default=1000, help="--exact: test images to evaluate (default 1000)")
    add_recipe_arguments(parser, DEFAULTS)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.samples is not None and min(args.samples) < 1:
        raise ValueError(f"--samples {args.samples}: MC dropout needs T >= 1 for every value")
    if not 0.0 < args.drop < 1.0:
        raise ValueError(f"--drop {args.drop}: the drop probability must lie in (0, 1) for this comparison")
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: need at least 1")
    return run_exact(args) if args.exact else run_compare(args)


# --------------------------------------------------------------------------------------- comparison


def error_detection_auroc(proba: Tensor, labels: Tensor, score: Tensor) -> float:
    """AUROC of ``score`` for telling misclassified inputs (positives) from correct ones."""
    wrong = proba.argmax(dim=1).cpu() != labels.cpu()
    if wrong.all() or not wrong.any():
        return float("nan")
    return roc_auc(score.cpu(), wrong)


def _scores(proba: Tensor, labels: Tensor, entropy: Tensor, mutual_information: Tensor | None = None) -> dict[str, float]:
    out = evaluate(proba.float(), labels)
    out["entropy_auroc"] = error_detection_auroc(proba, labels, entropy)
    if mutual_information is not None:
        out["bald_auroc"] = error_detection_auroc(proba, labels, mutual_information)
    return out


def run_compare(args: argparse.Namespace) -> int:
    splits = load_from_args(args)
    recipe = recipe_from_args(args)
    samples = sorted(set(args.samples or (1, 2, 5, 10, 20, 50)))
    x_test, y_test = splits.inputs("test"), splits.test.labels
    progress = False if args.quiet else None
    seeds = [recipe.seed + i for i in range(args.seeds)]
    # results[evaluation name][seed index] -> metrics; curves[kind][T][seed index] -> metrics
    results: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, dict[int, list[dict[str, float]]]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in seeds:
        for variant, kind, dropout_on in VARIANTS:
            config = {
                "arch": "mlp", "in_shape": list(splits.image_shape), "num_classes": splits.num_classes,
                "hidden": list(args.hidden), "dropout": args.drop if dropout_on else 0.0, "dropout_kind": kind,
            }
            model = build_model(config, seed=seed)  # same seed: same initial weights and batch order
            history = fit(model, splits.batches("train", batch_size=recipe.batch_size), recipe.replace(seed=seed),
                          progress=progress, description=f"{variant}, seed {seed}")
            seconds.setdefault(variant, []).append(history.seconds)
            proba = predict_proba(model, x_test)
            name = variant if not dropout_on else f"{variant} WS"
            results.setdefault(name, []).append(_scores(proba, y_test, predictive_entropy(proba.double())))
            if not dropout_on:
                console.print(f"seed {seed} {variant}: {100 * results[name][-1]['accuracy']:.2f}% "
                              f"nll {results[name][-1]['nll']:.4f} ({history.seconds:.0f} s training)")
                continue
            members = MCDropout(model, max(samples), seed=seed).members_proba(x_test)  # (T, N, C)
            for t in samples:
                mc = summarize(members[:t])  # the first t passes: MC(t)
                metrics = _scores(mc.proba, y_test, mc.entropy, mc.mutual_information)
                curves.setdefault(kind, {}).setdefault(t, []).append(metrics)
            results.setdefault(f"{variant} MC T={max(samples)}", []).append(metrics)
            console.print(
                f"seed {seed} {variant}: weight scaling {100 * results[name][-1]['accuracy']:.2f}% "
                f"nll {results[name][-1]['nll']:.4f}; MC(T={max(samples)}) {100 * metrics['accuracy']:.2f}% "
                f"nll {metrics['nll']:.4f}, entropy AUROC {metrics['entropy_auroc']:.3f}"
            )
    rows = [_aggregate_row(name, per_seed, seeds) for name, per_seed in results.items()]
    checks = _must_show(results, max(samples))
    plot = None
    if args.plot and args.plot.lower() != "none":
        plot = str(_plot(curves, results, samples, args.plot, splits.name))
    notes = [LEGEND] + [c["text"] for c in checks.values()] + ([f"wrote {plot}"] if plot else [])
    return finish(
        args, rows, title=f"dropout on {splits.name}: MLP {'-'.join(map(str, args.hidden))}, drop={args.drop}, "
        f"{len(seeds)} seeds x {recipe.epochs} epochs (mean over seeds)",
        metrics=("accuracy", "nll", "brier", "ece"), extra_columns=("acc std pp", "H AUROC", "MI AUROC"),
        notes=notes, dataset=splits.describe(), recipe=recipe.to_dict(), seeds=seeds, drop=args.drop,
        hidden=list(args.hidden), samples=samples, checks=checks, plot=plot,
        curves={kind: {str(t): _mean_std(ms) for t, ms in by_t.items()} for kind, by_t in curves.items()},
        train_seconds={k: statistics.fmean(v) for k, v in seconds.items()},
    )


def _mean_std(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = per_seed[0].keys()
    mean = {k: statistics.fmean(m[k] for m in per_seed) for k in keys}
    std = {k: statistics.stdev([m[k] for m in per_seed]) if len(per_seed) > 1 else 0.0 for k in keys}
    return {"mean": mean, "std": std}


def _aggregate_row(name: str, per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    stats = _mean_std(per_seed)
    return {
        "name": name, "test": stats["mean"], "test_std": stats["std"], "per_seed": dict(zip(map(str, seeds), per_seed)),
        "acc std pp": round(100 * stats["std"]["accuracy"], 3),
        "H AUROC": round(stats["mean"]["entropy_auroc"], 4),
        "MI AUROC": round(stats["mean"]["bald_auroc"], 4) if "bald_auroc" in stats["mean"] else None,
    }


def _must_show(results: dict[str, list[dict[str, float]]], t_max: int) -> dict[str, dict[str, Any]]:
    def mean(name: str, key: str) -> float:
        return statistics.fmean(m[key] for m in results[name])

    def std(name: str, key: str) -> float:
        values = [m[key] for m in results[name]]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    checks: dict[str, dict[str, Any]] = {}
    for kind in ("vanilla", "inverted"):
        ws, mc = f"{kind} WS", f"{kind} MC T={t_max}"
        ok = mean(mc, "nll") <= mean(ws, "nll")
        checks[f"{kind}_mc_nll_le_ws"] = {
            "passed": ok, "mc_nll": mean(mc, "nll"), "ws_nll": mean(ws, "nll"),
            "text": f"{kind}: MC(T={t_max}) NLL {mean(mc, 'nll'):.4f} {'<=' if ok else '>'} weight scaling NLL "
                    f"{mean(ws, 'nll'):.4f} ({'ok' if ok else 'NOT MET'})",
        }
        auroc = mean(mc, "entropy_auroc")
        checks[f"{kind}_entropy_auroc"] = {
            "passed": auroc > 0.8, "auroc": auroc,
            "text": f"{kind}: MC predictive-entropy AUROC for misclassified test images {auroc:.4f} "
                    f"({'> 0.8, ok' if auroc > 0.8 else '<= 0.8, NOT MET'})",
        }
    for how in ("WS", f"MC T={t_max}"):
        v, i = f"vanilla {how}", f"inverted {how}"
        gap = abs(mean(v, "accuracy") - mean(i, "accuracy"))
        bound = 2 * max(std(v, "accuracy"), std(i, "accuracy"))
        checks[f"vanilla_vs_inverted_{how.split()[0].lower()}"] = {
            "passed": gap <= bound, "gap": gap, "two_std": bound,
            "text": f"vanilla vs inverted ({how}): accuracy gap {100 * gap:.2f} pp "
                    f"{'<=' if gap <= bound else '>'} 2 std = {100 * bound:.2f} pp ({'ok' if gap <= bound else 'NOT MET'})",
        }
    return checks


def _plot(curves: dict[str, dict[int, list[dict[str, float]]]], results: dict[str, list[dict[str, float]]],
          samples: list[int], path: str, dataset: str) -> Any:
    fig, axes = new_figure(1, 2, figsize=(10, 4))
    colors = {"vanilla": "tab:blue", "inverted": "tab:orange"}
    for ax, key, label in ((axes[0], "accuracy", "test accuracy"), (axes[1], "nll", "test NLL")):
        for kind, by_t in curves.items():
            mean = [statistics.fmean(m[key] for m in by_t[t]) for t in samples]
            ax.plot(samples, mean, "o-", color=colors[kind], label=f"{kind}: MC dropout")
            ws = statistics.fmean(m[key] for m in results[f"{kind} WS"])
            ax.axhline(ws, color=colors[kind], linestyle="--", label=f"{kind}: weight scaling")
        ax.axhline(statistics.fmean(m[key] for m in results["no dropout"]), color="gray", linestyle=":", label="no dropout")
        ax.set_xscale("log")
        ax.set_xlabel("T (stochastic passes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MC dropout vs weight scaling on {dataset} (mean over seeds)")
    return save_figure(fig, path)


def demo_row(splits: Any, recipe: Recipe, progress: bool | None) -> dict[str, Any]:
    """`ensemblekit demo` row: the demo MLP with inverted dropout 0.2, predicted by MC dropout, T=20."""
    from .demo import mlp_config  # demo imports this module

    model = build_model({**mlp_config(splits), "dropout": 0.2}, seed=recipe.seed)
    fit(model, splits.batches("train", batch_size=recipe.batch_size), recipe, progress=progress,
        description="MC dropout MLP")
    mc = MCDropout(model, 20, seed=recipe.seed)
    return proba_row("MC dropout (T=20)", mc.predict_proba, splits)


# --------------------------------------------------------------------------------------- exact demo


def exact_net(in_shape: Sequence[int], num_classes: int, units: int, drop: float, kind: str) -> nn.Sequential:
    """Flatten -> 128 -> ReLU -> units -> ReLU -> Dropout -> 32 -> ReLU -> classes: one dropout
    layer of ``units`` units with a nonlinearity after it, so weight scaling is not exact."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(in_shape), 128), nn.ReLU(), nn.Linear(128, units), nn.ReLU(),
        make_dropout(drop, kind), nn.Linear(units, 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


def run_exact(args: argparse.Namespace) -> int:
    if not 1 <= args.units <= 20:
        raise ValueError(f"--units {args.units}: exact enumeration of 2^n masks needs 1 <= n <= 20")
    if args.exact_inputs < 1:
        raise ValueError(f"--exact-inputs {args.exact_inputs}: need at least 1 test image")
    splits = load_from_args(args)
    recipe = recipe_from_args(args)
    samples = sorted(set(args.samples or (1, 10, 100, 1000)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = exact_net(splits.image_shape, splits.num_classes, args.units, args.drop, args.kind)
    history = fit(model, splits.batches("train", batch_size=recipe.batch_size), recipe,
                  progress=False if args.quiet else None, description=f"exact-demo net ({args.units} dropout units)")
    head, layer, tail = split_at_dropout(model)
    keep, rule = layer.keep, layer.function
    x, y = splits.inputs("test")[: args.exact_inputs], splits.test.labels[: args.exact_inputs]
    with torch.no_grad():
        h = head(x)  # (N, units): the dropout layer's input, computed once
    exact = exact_ensemble(tail, h, keep, rule=rule)
    ws = weight_scaling(tail, h, keep, rule=rule)
    rows = [
        {"name": f"exact mean, 2^{args.units} masks", "test": ensemble_gaps(exact.arithmetic, exact.arithmetic, y)},
        {"name": "exact geometric mean", "test": ensemble_gaps(exact.arithmetic, exact.geometric, y)},
        {"name": "weight scaling", "test": ensemble_gaps(exact.arithmetic, ws, y)},
    ]
    mc_net = nn.Sequential(layer, tail)  # MC on h: the head is deterministic
    for t in samples:
        proba = MCDropout(mc_net, t, seed=recipe.seed).predict(h).proba
        rows.append({"name": f"MC (T={t})", "test": ensemble_gaps(exact.arithmetic, proba, y)})
    for row in rows:
        row.update({"TV to exact": row["test"]["tv"], "max |dp|": row["test"]["max_abs"], "KL": row["test"]["kl"]})
    ws_vs_geo = ensemble_gaps(exact.geometric, ws)
    example = two_input_example(w0=0.5, w1=-1.0, x=2.0, y=3.0, keep=keep)
    ws_gap = rows[2]["test"]
    notes = [
        f"weight scaling vs the true ensemble mean over {len(y)} test images: mean total variation "
        f"{ws_gap['tv']:.4f}, largest |dp| {ws_gap['max_abs']:.4f}, KL {ws_gap['kl']:.5f}, "
        f"argmax differs on {100 * ws_gap['argmax_disagree']:.2f}% of images",
        f"weight scaling vs the normalised geometric mean: mean TV {ws_vs_geo['tv']:.4f} "
        "(0 when only a linear layer + softmax follows the dropout; here a ReLU layer does)",
        "two-input example a = w0 x m0 + w1 y m1, (w0, w1, x, y) = (0.5, -1, 2, 3), keep p = "
        f"{keep:g}: enumerated E[a] = {example['expected']:.6f}, p (w0 x + w1 y) = {example['closed_form']:.6f}"
        + ("" if args.kind == "vanilla" else " (vanilla rule; inverted divides by p, so E[a] = w0 x + w1 y)"),
    ]
    notes = [escape(n) for n in notes]  # "E[a]" is not rich markup
    return finish(
        args, rows, title=f"exact dropout ensemble on {splits.name}: {args.kind} dropout, keep={keep:g}, "
        f"{args.units} units, {len(y)} test images",
        metrics=("accuracy", "nll", "ece"), extra_columns=("TV to exact", "max |dp|", "KL"),
        notes=notes, dataset=splits.describe(), recipe=recipe.to_dict(), units=args.units, keep=keep,
        kind=args.kind, samples=samples, two_input_example=example, weight_scaling_vs_geometric=ws_vs_geo,
        train_seconds=history.seconds,
    )
