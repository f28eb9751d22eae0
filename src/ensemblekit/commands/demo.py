"""`ensemblekit demo`: the methods side by side on the bundled digits, in well under a minute."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from ..data import Splits, load
from ..models import build_model
from ..train import Recipe, fit
from .common import add_output_arguments, finish, model_row

NAME = "demo"
HELP = "compare the methods on scikit-learn's bundled digits (no downloads, < 60 s)"

DEMO_RECIPE = Recipe(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4, device="cpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    add_output_arguments(parser)


def mlp_config(splits: Splits) -> dict[str, Any]:
    return {"arch": "mlp", "in_shape": list(splits.image_shape), "num_classes": splits.num_classes, "hidden": [256, 256]}


def single_row(splits: Splits, recipe: Recipe, progress: bool | None) -> dict[str, Any]:
    model = build_model(mlp_config(splits), seed=recipe.seed)
    fit(model, splits.batches("train", batch_size=recipe.batch_size), recipe, progress=progress, description="single MLP")
    return model_row("single MLP", model, splits)


def demo_rows() -> list[Callable[[Splits, Recipe, bool | None], dict[str, Any]]]:
    """The demo table, one function per row: (splits, recipe, progress) -> row.

    Imported here, not at module level, because each command's row builds on `mlp_config` above.
    """
    from .averaging import ema_demo_row, snapshot_demo_row
    from .dropout import demo_row as mc_dropout_row
    from .ensemble import demo_row as ensemble_row
    from .occlusion import demo_row as cutout_row

    return [single_row, ensemble_row, snapshot_demo_row, ema_demo_row, mc_dropout_row, cutout_row]


def run(args: argparse.Namespace) -> int:
    splits = load("digits")
    recipe = DEMO_RECIPE.replace(seed=args.seed)
    progress = False if args.quiet else None
    rows = []
    for make_row in demo_rows():
        started = time.perf_counter()
        row = make_row(splits, recipe, progress)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
    return finish(
        args, rows, title="ensemblekit demo: digits (8x8), MLP 256-256", extra_columns=("seconds",),
        dataset=splits.describe(), recipe=recipe.to_dict(),
    )
