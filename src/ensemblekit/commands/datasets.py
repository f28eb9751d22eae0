"""`ensemblekit datasets`: each known dataset, whether it was found, where, and how to get it."""

from __future__ import annotations

import argparse

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
            continue
        folder = locate(name, args.data_dir)
        if folder is not None:
            table.add_row(name, "[green]yes[/]", str(folder), meta.description)
        else:
            looked = "\n".join(f"  {d}" for d in search_dirs(name, args.data_dir))
            table.add_row(name, "[red]no[/]", f"looked in:\n{looked}\n{meta.how_to_get}", meta.description)
    # Omniglot serves the Siamese command (pairs and one-shot runs), not classification
    from .. import omniglot

    needed = omniglot.SMALL_BACKGROUND + (omniglot.RUNS_ZIP,)
    folder = omniglot.locate(needed, args.data_dir)
    where = str(folder) if folder is not None else (
        "looked in:\n" + "\n".join(f"  {d}" for d in search_dirs("omniglot", args.data_dir))
        + "\nput images_background_small1/2.zip and all_runs.zip there, or `ensemblekit siamese --download`"
    )
    table.add_row("omniglot", "[green]yes[/]" if folder is not None else "[red]no[/]", where,
                  "Omniglot handwritten characters, 105x105 (Siamese / one-shot; `ensemblekit siamese`)")
    table.add_row("folder:PATH", "-", "one sub-folder per class under PATH, any image Pillow reads", "your own images")
    console.print(table)
    return 0
