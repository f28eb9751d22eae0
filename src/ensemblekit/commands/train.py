"""`ensemblekit train`: one model, one recipe, a metrics table."""

from __future__ import annotations

import argparse

from ..models import build_model
from ..train import evaluate_model, fit
from .common import (
    add_data_arguments, add_model_arguments, add_output_arguments, add_recipe_arguments, finish,
    load_from_args, model_config_from_args, model_row, recipe_from_args,
)

NAME = "train"
HELP = "train one model and print its metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, default="digits")
    add_model_arguments(parser)
    add_recipe_arguments(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    splits = load_from_args(args)
    config = model_config_from_args(args, splits)
    model = build_model(config, seed=recipe.seed)
    validate = None
    if len(splits.val):
        val_inputs = splits.inputs("val")
        validate = lambda m: evaluate_model(m, val_inputs, splits.val.labels)
    history = fit(model, splits.batches("train", batch_size=recipe.batch_size), recipe,
                  validate=validate, progress=not args.quiet and None, description=f"{args.model} on {splits.name}")
    row = model_row(args.model, model, splits)
    row["seconds"] = history.seconds
    return finish(
        args, [row], title=f"{args.model} on {splits.name}, {recipe.epochs} epochs",
        extra_columns=("seconds",), dataset=splits.describe(), recipe=recipe.to_dict(),
        model=config, history=history.to_dict(),
    )
