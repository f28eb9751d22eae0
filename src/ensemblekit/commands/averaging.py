"""`ensemblekit averaging`: one training budget, four predictors: the single model (last iterate),
its EMA weights, SWA, and a snapshot ensemble, each with its lr chosen on validation from the same
grid, then scored on test (mean over seeds)."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..averaging import EMA, SWA, RecordAveraged, plot_averaged_history, recompute_batchnorm
from ..data import Splits
from ..ensemble import Ensemble
from ..metrics import evaluate
from ..models import build_model
from ..schedules import Cosine
from ..snapshots import check_snapshot_plan, plot_lr_schedule, train_snapshot_ensemble
from ..train import Recipe, evaluate_model, fit
from .common import (
    add_training_arguments, add_output_arguments, console, finish,
    load_from_args, model_config_from_args, recipe_from_args,
)

NAME = "averaging"
HELP = "single model vs EMA vs SWA vs snapshot ensemble at the same epoch budget"

METHODS = ("single", "ema", "swa", "snapshots")
BN_PASS_BATCHES = 50  # batches of the cheap per-epoch BatchNorm estimate for SWA curves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    add_averaging_arguments(parser)
    group = parser.add_argument_group("comparison")
    group.add_argument("--lrs", type=float, nargs="+", default=None,
                       help="peak lrs to try; each method keeps the one with the best validation accuracy (default: --lr only)")
    group.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to average test metrics over (default: --seed)")
    group.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all")
    group.add_argument("--plot-dir", default=None, help="write lr-schedule and raw-vs-averaged PNGs here")
    add_output_arguments(parser)


def add_averaging_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--snapshots, --cycle-epochs, --t-mult, --ema, --ema-warmup, --swa-start, --swa-lr."""
    group = parser.add_argument_group("snapshots and averaging")
    group.add_argument("--snapshots", type=int, default=5 if defaults else None, metavar="M",
                       help="snapshot ensemble of the last M cycle-end weights" + (" (default 5)" if defaults else ""))
    group.add_argument("--cycle-epochs", type=int, default=None, metavar="E",
                       help="epochs per lr cycle (default: epochs / snapshots)")
    group.add_argument("--t-mult", type=int, default=1, help="each cycle this many times longer than the last (default 1)")
    group.add_argument("--ema", type=float, default=0.999 if defaults else None, metavar="DECAY",
                       help="EMA decay per step, in (0, 1)" + (" (default 0.999)" if defaults else ""))
    group.add_argument("--ema-warmup", action="store_true", help="timm-style decay warm-up")
    group.add_argument("--swa-start", type=int, default=None, metavar="EPOCH",
                       help="average the weights after each epoch from this 0-based epoch on (default: 3/4 of the epochs)")
    group.add_argument("--swa-lr", type=float, default=None, help="constant lr of the SWA phase (default: lr / 5)")


# ----------------------------------------------------------------------------- one method, one run


def check_swa_start(swa_start: int, epochs: int) -> None:
    if not 0 <= swa_start < epochs:
        raise ValueError(
            f"swa_start={swa_start} is beyond the last epoch: with epochs={epochs} choose 0..{epochs - 1} "
            f"(0-based; the usual choice is about 3/4 of the budget, {max(0, (3 * epochs) // 4)})"
        )


def check_swa_lr(swa_lr: float, lr: float) -> None:
    if not 0 < swa_lr <= lr:
        raise ValueError(f"swa_lr={swa_lr}: must lie in (0, lr={lr}] (the cosine anneals from lr down to it)")


def default_cycle_epochs(epochs: int, snapshots: int) -> int:
    return max(1, epochs // snapshots)


def _validator(splits: Splits, split: str = "val") -> Callable[[nn.Module], dict[str, float]]:
    inputs, labels = splits.inputs(split), splits[split].labels
    return lambda model: evaluate_model(model, inputs, labels)


def _ensemble_validator(splits: Splits, split: str = "val") -> Callable[[Ensemble], dict[str, float]]:
    inputs, labels = splits.inputs(split), splits[split].labels
    return lambda ens: evaluate(ens.predict_proba(inputs), labels)


def _scores(predict: Callable[[Any], Any], splits: Splits) -> dict[str, dict[str, float]]:
    return {s: evaluate(predict(splits.inputs(s)), splits[s].labels) for s in ("val", "test") if len(splits[s])}


def train_single_with_ema(
    splits: Splits, config: dict[str, Any], recipe: Recipe, *, ema_decay: float | None, ema_warmup: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """One cosine run; scores of its last iterate (and of its EMA weights). Returns results by method."""
    model = build_model(config, seed=recipe.seed)
    validate = _validator(splits) if len(splits.val) else None
    hooks: list[Any] = []
    ema = None
    if ema_decay is not None:
        ema = EMA(model, ema_decay, warmup=ema_warmup, buffers="average")
        hooks.append(ema)
        if validate is not None:
            hooks.append(RecordAveraged("ema", ema, validate))
    batches = splits.batches("train", batch_size=recipe.batch_size)
    history = fit(model, batches, recipe, validate=validate, hooks=hooks, progress=progress, description=f"single lr={recipe.lr:g}")
    out = {"single": {"scores": _scores(lambda x: _proba(model, x), splits), "history": history, "model": model}}
    if ema is not None:
        out["ema"] = {"scores": _scores(lambda x: _proba(ema.module, x), splits), "history": history, "model": ema.module}
    out["single"]["steps_per_epoch"] = len(batches)
    return out


def train_swa(
    splits: Splits, config: dict[str, Any], recipe: Recipe, *, swa_start: int, swa_lr: float, progress: bool | None = None,
) -> dict[str, Any]:
    """Cosine from lr down to ``swa_lr`` over ``swa_start`` epochs, then constant ``swa_lr`` while
    averaging after every epoch; BatchNorm recomputed over the training data at the end."""
    check_swa_start(swa_start, recipe.epochs)
    check_swa_lr(swa_lr, recipe.lr)
    model = build_model(config, seed=recipe.seed)
    batches = splits.batches("train", batch_size=recipe.batch_size)
    schedule = Cosine(recipe.lr, swa_start * len(batches), min_lr=swa_lr)  # holds swa_lr after swa_start
    swa = SWA(model, start_epoch=swa_start)
    validate = _validator(splits) if len(splits.val) else None
    hooks: list[Any] = [swa]
    if validate is not None:
        quick_bn = lambda m: recompute_batchnorm(m, batches, max_batches=BN_PASS_BATCHES)
        hooks.append(RecordAveraged("swa", swa, validate, prepare=quick_bn))
    history = fit(model, batches, recipe, validate=validate, hooks=hooks, schedule=schedule, progress=progress,
                  description=f"SWA lr={recipe.lr:g}")
    recompute_batchnorm(swa.module, batches)
    return {"swa": {"scores": _scores(lambda x: _proba(swa.module, x), splits), "history": history, "model": swa.module}}


def train_snapshots(
    splits: Splits, config: dict[str, Any], recipe: Recipe, *, snapshots: int, cycle_epochs: int, t_mult: int = 1,
    progress: bool | None = None,
) -> dict[str, Any]:
    model = build_model(config, seed=recipe.seed)
    batches = splits.batches("train", batch_size=recipe.batch_size)
    has_val = len(splits.val) > 0
    run = train_snapshot_ensemble(
        model, batches, recipe, snapshots=snapshots, cycle_epochs=cycle_epochs, t_mult=t_mult,
        validate=_validator(splits) if has_val else None,
        validate_ensemble=_ensemble_validator(splits) if has_val else None,
        progress=progress, description=f"snapshots lr={recipe.lr:g}",
    )
    last = run.ensemble.members[-1]
    return {
        "snapshots": {"scores": _scores(run.ensemble.predict_proba, splits), "history": run.history, "run": run},
        "last snapshot": {"scores": _scores(lambda x: _proba(last, x), splits), "history": run.history},
    }


def _proba(model: nn.Module, inputs: Any) -> Any:
    from ..train import predict_proba

    return predict_proba(model, inputs)


# ----------------------------------------------------------------------------- the comparison


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    lrs = args.lrs or [recipe.lr]
    seeds = args.seeds or [recipe.seed]
    cycle_epochs = args.cycle_epochs or default_cycle_epochs(recipe.epochs, args.snapshots)
    swa_start = (3 * recipe.epochs) // 4 if args.swa_start is None else args.swa_start
    methods = list(dict.fromkeys(args.methods))
    # every bad value fails here, before any training
    if "snapshots" in methods:
        check_snapshot_plan(recipe.epochs, cycle_epochs, args.snapshots, args.t_mult)
    if "swa" in methods:
        check_swa_start(swa_start, recipe.epochs)
        for lr in lrs:
            check_swa_lr(args.swa_lr or lr / 5, lr)
    if "ema" in methods:
        EMA(nn.Linear(1, 1), args.ema)  # validates the decay
    for lr in lrs:
        recipe.replace(lr=lr)
    splits = load_from_args(args)
    if not len(splits.val) and len(lrs) > 1:
        raise ValueError("choosing among --lrs needs a validation split; set --val-size > 0")
    config = model_config_from_args(args, splits)
    progress = False if args.quiet else None

    def train(method: str, lr: float, seed: int) -> dict[str, Any]:
        r = recipe.replace(lr=lr, seed=seed)
        if method in ("single", "ema"):
            return train_single_with_ema(splits, config, r, ema_decay=args.ema if "ema" in methods else None,
                                         ema_warmup=args.ema_warmup, progress=progress)
        if method == "swa":
            return train_swa(splits, config, r, swa_start=swa_start, swa_lr=args.swa_lr or lr / 5, progress=progress)
        return train_snapshots(splits, config, r, snapshots=args.snapshots, cycle_epochs=cycle_epochs,
                               t_mult=args.t_mult, progress=progress)

    # the runs: (training kind, lr, seed) -> results by method; single and EMA share a run
    kinds = list(dict.fromkeys("single" if m == "ema" else m for m in methods))
    cache: dict[tuple[str, float, int], dict[str, Any]] = {}

    def results(kind: str, lr: float, seed: int) -> dict[str, Any]:
        if (kind, lr, seed) not in cache:
            out = train(kind, lr, seed)
            cache[(kind, lr, seed)] = out
            console.print(f"  {kind} lr={lr:g} seed={seed}: " + ", ".join(
                f"{name} val {100 * r['scores']['val']['accuracy']:.2f}%" if "val" in r["scores"] else name
                for name, r in out.items()))
        return cache[(kind, lr, seed)]

    search: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    for kind in kinds:
        for lr in lrs:
            for name, r in results(kind, lr, seeds[0]).items():
                if "val" in r["scores"]:
                    search.append({"method": name, "lr": lr, "val": r["scores"]["val"]})
    names = [n for m in methods for n in ([m, "last snapshot"] if m == "snapshots" else [m])]
    for name in names:
        tried = [s for s in search if s["method"] == name]
        # best validation accuracy; NLL breaks ties
        chosen[name] = max(tried, key=lambda s: (s["val"]["accuracy"], -s["val"]["nll"]))["lr"] if tried else lrs[0]
    # read off the same runs: EMA vs the last iterate of the very run it averages, the last
    # snapshot of the ensemble's own run (and no extra training for either)
    if "ema" in chosen and "single" in chosen:
        chosen["ema"] = chosen["single"]
    if "last snapshot" in chosen:
        chosen["last snapshot"] = chosen["snapshots"]

    rows = []
    for name in names:
        kind = "single" if name == "ema" else "snapshots" if name == "last snapshot" else name
        per_seed = [results(kind, chosen[name], seed)[name]["scores"] for seed in seeds]
        row: dict[str, Any] = {"name": _row_name(name, args, cycle_epochs, swa_start, recipe.epochs), "method": name}
        for split in ("val", "test"):
            if split in per_seed[0]:
                row[split] = {k: statistics.fmean(s[split][k] for s in per_seed) for k in per_seed[0][split]}
                if len(seeds) > 1:
                    row[f"{split}_std"] = {k: statistics.stdev(s[split][k] for s in per_seed) for k in per_seed[0][split]}
        row["per_seed_test"] = [s.get("test") for s in per_seed]
        row["lr"], row["seeds"] = chosen[name], len(seeds)
        rows.append(row)

    notes = [f"equal budget: {recipe.epochs} epochs each; lr chosen on validation from {lrs} (seed {seeds[0]}; "
             f"EMA and the last snapshot are read off the single and snapshot runs); "
             f"test metrics are the mean over seeds {seeds}"]
    if len(seeds) > 1:
        notes.append("test std over seeds: " + "; ".join(
            f"{r['name']}: acc ±{100 * r['test_std']['accuracy']:.2f}%, nll ±{r['test_std']['nll']:.4f}" for r in rows if "test_std" in r))
    if args.plot_dir:
        notes += _plots(Path(args.plot_dir), cache, chosen, seeds[0], methods)
    return finish(
        args, rows, title=f"{config['arch']} on {splits.name}: single / EMA / SWA / snapshot ensemble, {recipe.epochs} epochs",
        extra_columns=("lr", "seeds"), notes=notes, dataset=splits.describe(), recipe=recipe.to_dict(), model=config,
        lrs=lrs, seed_list=seeds, search=search,
        settings={"snapshots": args.snapshots, "cycle_epochs": cycle_epochs, "t_mult": args.t_mult, "ema": args.ema,
                  "ema_warmup": args.ema_warmup, "swa_start": swa_start, "swa_lr": args.swa_lr or "lr/5"},
        histories={f"{k[0]} lr={k[1]:g} seed={k[2]}": next(iter(v.values()))["history"].epochs for k, v in cache.items()},
    )


def _row_name(name: str, args: argparse.Namespace, cycle_epochs: int, swa_start: int, epochs: int) -> str:
    cycles = epochs // cycle_epochs if args.t_mult == 1 else "?"
    return {
        "single": "single (cosine, last iterate)",
        "ema": f"EMA {args.ema:g} of the single run",
        "swa": f"SWA (epochs {swa_start + 1}-{epochs})",
        "snapshots": f"snapshot ensemble ({args.snapshots} of {cycles}x{cycle_epochs} ep)",
        "last snapshot": "last snapshot alone",
    }[name]


def _plots(folder: Path, cache: dict, chosen: dict[str, float], seed: int, methods: Sequence[str]) -> list[str]:
    notes = []
    single = cache.get(("single", chosen.get("single", math.nan), seed))
    if "snapshots" in methods:
        out = cache[("snapshots", chosen["snapshots"], seed)]["snapshots"]
        run = out["run"]
        compare = {"single (cosine)": single["single"]["history"].lr} if single else None
        path = plot_lr_schedule(run.history.lr, str(folder / "lr_schedule.png"), steps_per_epoch=run.steps_per_epoch,
                                snapshot_steps=run.snapshot_steps, compare=compare,
                                title=f"lr per step; snapshots at cycle ends (lr={chosen['snapshots']:g})")
        notes.append(f"wrote {path}")
        path = plot_averaged_history(run.history.epochs, str(folder / "snapshot_history.png"),
                                     title="snapshot run: raw weights vs snapshot ensemble (validation)")
        notes.append(f"wrote {path}")
    if single is not None and "ema" in single:
        path = plot_averaged_history(single["single"]["history"].epochs, str(folder / "ema_history.png"),
                                     title="single cosine run: raw weights vs EMA (validation)")
        notes.append(f"wrote {path}")
    if "swa" in methods:
        out = cache[("swa", chosen["swa"], seed)]["swa"]
        path = plot_averaged_history(out["history"].epochs, str(folder / "swa_history.png"),
                                     title="SWA run: raw weights vs SWA average (validation)")
        notes.append(f"wrote {path}")
    return notes


# ----------------------------------------------------------------------------- demo rows


def snapshot_demo_row(splits: Splits, recipe: Recipe, progress: bool | None) -> dict[str, Any]:
    """`ensemblekit demo`: the demo budget as 5 cosine cycles, the 5 cycle-end weights as one ensemble."""
    from .demo import mlp_config

    cycles = 5
    out = train_snapshots(splits, mlp_config(splits), recipe, snapshots=cycles,
                          cycle_epochs=default_cycle_epochs(recipe.epochs, cycles), progress=progress)
    return {"name": f"snapshot ensemble ({cycles})", **out["snapshots"]["scores"]}


def ema_demo_row(splits: Splits, recipe: Recipe, progress: bool | None) -> dict[str, Any]:
    """`ensemblekit demo`: the single MLP's EMA weights (decay 0.99 with warm-up: the run is short)."""
    from .demo import mlp_config

    out = train_single_with_ema(splits, mlp_config(splits), recipe, ema_decay=0.99, ema_warmup=True, progress=progress)
    return {"name": "EMA 0.99 of single MLP", **out["ema"]["scores"]}
