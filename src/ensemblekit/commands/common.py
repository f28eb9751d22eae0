"""Options and steps that several sub-commands share: data, model, recipe, output."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from rich.console import Console
from torch import Tensor

from .. import __version__
from ..data import Splits, load
from ..models import build_model
from ..report import DEFAULT_METRICS, print_table, write_html, write_json
from ..metrics import evaluate
from ..train import PRECISIONS, Recipe, predict_proba

console = Console(stderr=False)
err_console = Console(stderr=True)


def add_data_arguments(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=default, help=f"dataset name or folder:PATH (default: {default}); see `ensemblekit datasets`")
    group.add_argument("--data-dir", default=None, help="folder holding the dataset files (searched first)")
    group.add_argument("--val-size", type=float, default=None, help="validation split: a fraction (<1) or a count (default 0.1)")
    group.add_argument("--download", action="store_true", help="download the dataset into the cache if it is not found")


def add_model_arguments(parser: argparse.ArgumentParser, default: str = "mlp") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=("mlp", "cnn"), default=default, help=f"architecture (default: {default})")
    group.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP hidden widths (default 512 512), or the CNN head width")
    group.add_argument("--channels", type=int, nargs="+", default=None, help="CNN block widths (default 32 64)")
    group.add_argument("--no-batchnorm", action="store_true", help="CNN without BatchNorm")
    group.add_argument("--dropout", type=float, default=0.0, help="drop probability of the dropout layers (default 0)")


def add_recipe_arguments(parser: argparse.ArgumentParser, defaults: Recipe | None = None) -> None:
    d = defaults or Recipe()
    group = parser.add_argument_group("training recipe")
    group.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    group.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    group.add_argument("--optimizer", default=d.optimizer, help=f"sgd or adamw (default {d.optimizer})")
    group.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    group.add_argument("--momentum", type=float, default=d.momentum, help=f"default {d.momentum}")
    group.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}")
    group.add_argument("--schedule", default=d.schedule, help=f"constant, step or cosine (default {d.schedule})")
    group.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help=f"default {d.warmup_epochs}")
    group.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help=f"default {d.label_smoothing}")
    group.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    group.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default auto)")
    group.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                       help="bf16: bfloat16 autocast for the forward pass, ~2x faster on CPUs with AMX "
                            f"and on recent GPUs (default {d.precision})")


def add_training_arguments(
    parser: argparse.ArgumentParser, *, dataset: str = "digits", model: str = "mlp", recipe: Recipe | None = None,
) -> None:
    """Data, model and recipe options: what every command that trains a classifier takes."""
    add_data_arguments(parser, default=dataset)
    add_model_arguments(parser, default=model)
    add_recipe_arguments(parser, recipe)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", metavar="FILE", default=None, help="also write the results table to FILE as JSON")
    group.add_argument("--html", metavar="FILE", default=None, help="also write a self-contained HTML report (table, notes, figures)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def recipe_from_args(args: argparse.Namespace, **overrides: Any) -> Recipe:
    fields = dict(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, seed=args.seed,
        device=args.device, precision=args.precision,
    )
    fields.update(overrides)
    return Recipe(**fields)


def load_from_args(args: argparse.Namespace) -> Splits:
    val = args.val_size
    if val is not None and val >= 1:
        val = int(val)
    return load(args.dataset, data_dir=args.data_dir, val_size=val, seed=0, download_missing=args.download)


def model_config_from_args(args: argparse.Namespace, splits: Splits) -> dict[str, Any]:
    config: dict[str, Any] = {
        "arch": args.model, "in_shape": list(splits.image_shape), "num_classes": splits.num_classes,
        "dropout": args.dropout,
    }
    if args.model == "mlp":
        if args.hidden:
            config["hidden"] = list(args.hidden)
    else:
        if args.channels:
            config["channels"] = list(args.channels)
        if args.hidden:
            config["hidden"] = args.hidden[0]
        config["batchnorm"] = not args.no_batchnorm
    build_model(config)  # fail now, with the config's own message, not after loading
    return config


def proba_row(
    name: str, predict: Callable[[Tensor], Tensor], splits: Splits, splits_to_score: Sequence[str] = ("val", "test"),
) -> dict[str, Any]:
    """A result row for any predictor of class probabilities (an ensemble, MC dropout), metrics grouped by split."""
    row: dict[str, Any] = {"name": name}
    for split in splits_to_score:
        if len(splits[split]):
            row[split] = evaluate(predict(splits.inputs(split)), splits[split].labels)
    return row


def model_row(name: str, model: Any, splits: Splits, splits_to_score: Sequence[str] = ("val", "test")) -> dict[str, Any]:
    """A result row for one trained model (its eval-mode probabilities), metrics grouped by split."""
    return proba_row(name, lambda x: predict_proba(model, x), splits, splits_to_score)


def finish(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    *,
    title: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    extra_columns: Sequence[str] = (),
    notes: Sequence[str] = (),
    figures: Sequence[Any] = (),
    **meta: Any,
) -> int:
    """Print the table (and notes), write ``--json`` / ``--html`` if asked; the exit code."""
    print_table(rows, title=title, metrics=metrics, extra_columns=extra_columns, console=console)
    for note in notes:
        console.print(note)
    if getattr(args, "json", None):
        write_json(args.json, {"command": args.command, "version": __version__, "rows": rows, **meta})
        console.print(f"wrote {args.json}")
    if getattr(args, "html", None):
        write_html(args.html, title=title, rows=rows, figures=figures, notes=notes, meta={"command": args.command, **meta})
        console.print(f"wrote {args.html}")
    return 0
