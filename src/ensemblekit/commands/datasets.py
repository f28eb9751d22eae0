"""`ensemblekit datasets`: each known dataset, whether it was found, where, and how to get it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ..data import DATASETS, locate, search_dirs
from .common import console

NAME = "datasets"
HELP = "list known datasets, where they were found and how to get them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="also look in this folder")


def run(args: argparse.Namespace) -> int:
    table = Table(title="datasets", title_justify="left", show_lines=True)
    for column in ("name", "found", "where / how to get it", "description"):
        table.add_column(column)
    for name, meta in sorted(DATASETS.items()):
        if meta.builtin is not None:
            table.add_row(name, "[green]yes[/]", meta.how_to_get, meta.description)
        else:
            table.add_row(*_found_row(name, locate(name, args.data_dir), args.data_dir, meta.how_to_get, meta.description))
    # Omniglot serves the Siamese command (pairs and one-shot runs), not classification
    from .. import omniglot

    folder = omniglot.locate(omniglot.SMALL_BACKGROUND + (omniglot.RUNS_ZIP,), args.data_dir)
    table.add_row(*_found_row(
        "omniglot", folder, args.data_dir,
        "put images_background_small1/2.zip and all_runs.zip there, or `ensemblekit siamese --download`",
        "Omniglot handwritten characters, 105x105 (Siamese / one-shot; `ensemblekit siamese`)",
    ))
    table.add_row("folder:PATH", "-", "one sub-folder per class under PATH, any image Pillow reads", "your own images")
    console.print(table)
    return 0


def _found_row(name: str, folder: Path | None, data_dir: str | None, how_to_get: str, description: str) -> tuple[str, ...]:
    """A table row: where the dataset was found, or where it was looked for and how to get it."""
    if folder is not None:
        return name, "[green]yes[/]", str(folder), description
    looked = "\n".join(f"  {d}" for d in search_dirs(name, data_dir))
    return name, "[red]no[/]", f"looked in:\n{looked}\n{how_to_get}", description
