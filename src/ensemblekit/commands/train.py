"""`ensemblekit train`: one model, one recipe, a metrics table.

Optional extras from the same run: ``--snapshots M --cycle-epochs E`` (cyclic lr, the last M
cycle-end weights as an ensemble), ``--ema DECAY`` (a moving average of the weights),
``--swa-start EPOCH [--swa-lr LR]`` (uniform average from that epoch, its own lr). Each adds a row.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..averaging import EMA, SWA, RecordAveraged, plot_averaged_history, recompute_batchnorm
from ..metrics import evaluate
from ..models import build_model
from ..schedules import Cosine
from ..snapshots import SnapshotHook, check_snapshot_plan, plot_lr_schedule, snapshot_schedule
from ..train import evaluate_model, fit
from .averaging import BN_PASS_BATCHES, add_averaging_arguments, check_swa_lr, check_swa_start, default_cycle_epochs
from .common import (
    add_training_arguments, add_output_arguments, finish,
    load_from_args, model_config_from_args, model_row, proba_row, recipe_from_args,
)

NAME = "train"
HELP = "train one model and print its metrics (optionally with snapshots, EMA or SWA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    add_averaging_arguments(parser, defaults=False)
    parser.add_argument("--plot-dir", default=None, help="write the lr schedule and raw-vs-averaged curves here (PNG)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    snapshots = getattr(args, "snapshots", None)
    ema_decay = getattr(args, "ema", None)
    swa_start = getattr(args, "swa_start", None)
    cycle_epochs = getattr(args, "cycle_epochs", None)
    if cycle_epochs is not None and snapshots is None:
        raise ValueError(f"--cycle-epochs {cycle_epochs} needs --snapshots M (how many cycle-end weights to keep)")
    if args.swa_lr is not None and swa_start is None:
        raise ValueError(f"--swa-lr {args.swa_lr} needs --swa-start EPOCH")
    if snapshots is not None and swa_start is not None:
        raise ValueError("--snapshots and --swa-start each set the lr schedule; use one of them per run")
    if snapshots is not None:
        cycle_epochs = cycle_epochs or default_cycle_epochs(recipe.epochs, snapshots)
        check_snapshot_plan(recipe.epochs, cycle_epochs, snapshots, args.t_mult)
    swa_lr = None
    if swa_start is not None:
        swa_lr = args.swa_lr if args.swa_lr is not None else recipe.lr / 5
        check_swa_start(swa_start, recipe.epochs)
        check_swa_lr(swa_lr, recipe.lr)

    splits = load_from_args(args)
    config = model_config_from_args(args, splits)
    model = build_model(config, seed=recipe.seed)
    batches = splits.batches("train", batch_size=recipe.batch_size)
    validate = None
    if len(splits.val):
        val_inputs = splits.inputs("val")
        validate = lambda m: evaluate_model(m, val_inputs, splits.val.labels)

    schedule = None
    hooks: list[Any] = []
    snapshot_hook = ema = swa = None
    if snapshots is not None:
        schedule = snapshot_schedule(recipe, len(batches), cycle_epochs, args.t_mult)
        validate_ensemble = None
        if len(splits.val):
            validate_ensemble = lambda ens: evaluate(ens.predict_proba(val_inputs), splits.val.labels)
        snapshot_hook = SnapshotHook(schedule, snapshots, validate=validate_ensemble)
        hooks.append(snapshot_hook)
    if swa_start is not None:
        schedule = Cosine(recipe.lr, swa_start * len(batches), min_lr=swa_lr)  # then holds swa_lr
        swa = SWA(model, start_epoch=swa_start)
        hooks.append(swa)
        if validate is not None:
            quick_bn = lambda m: recompute_batchnorm(m, batches, max_batches=BN_PASS_BATCHES)
            hooks.append(RecordAveraged("swa", swa, validate, prepare=quick_bn))
    if ema_decay is not None:
        ema = EMA(model, ema_decay, warmup=args.ema_warmup, buffers="average")
        hooks.append(ema)
        if validate is not None:
            hooks.append(RecordAveraged("ema", ema, validate))

    history = fit(model, batches, recipe, validate=validate, hooks=hooks, schedule=schedule,
                  progress=not args.quiet and None, description=f"{args.model} on {splits.name}")
    row = model_row(args.model if not hooks else f"{args.model} (last iterate)", model, splits)
    row["seconds"] = history.seconds
    rows = [row]
    if snapshot_hook is not None:
        ensemble = snapshot_hook.ensemble()
        rows.append(proba_row(f"snapshot ensemble ({len(ensemble)} snapshots)", ensemble.predict_proba, splits))
    if ema is not None:
        rows.append(model_row(f"EMA {ema_decay:g}", ema.module, splits))
    if swa is not None:
        recompute_batchnorm(swa.module, batches)
        rows.append(model_row(f"SWA (epochs {swa_start + 1}-{recipe.epochs}, lr {swa_lr:g})", swa.module, splits))

    notes = []
    if args.plot_dir:
        folder = Path(args.plot_dir)
        path = plot_lr_schedule(history.lr, str(folder / "lr_schedule.png"), steps_per_epoch=len(batches),
                                snapshot_steps=snapshot_hook.steps if snapshot_hook else ())
        notes.append(f"wrote {path}")
        if history.epochs and any("_val_" in k for k in history.epochs[-1]):
            notes.append(f"wrote {plot_averaged_history(history.epochs, str(folder / 'averaged_history.png'))}")
    extra: dict[str, Any] = {}
    if snapshot_hook is not None:
        extra["snapshot_steps"] = snapshot_hook.steps
    return finish(
        args, rows, title=f"{args.model} on {splits.name}, {recipe.epochs} epochs",
        extra_columns=("seconds",), notes=notes, dataset=splits.describe(), recipe=recipe.to_dict(),
        model=config, history=history.to_dict(), **extra,
    )
