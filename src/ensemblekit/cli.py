"""The `ensemblekit` command: parses, calls the library, prints. Sub-commands live in
`ensemblekit.commands`, one module each."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__
from .data import DataError
from .train import TrainingError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("demo", "datasets", "train", "occlusion", "averaging", "ensemble", "predict", "dropout", "siamese")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ensemblekit",
        description="Ensembles, snapshots, Polyak averaging, dropout, occlusions and Siamese nets, measured.",
    )
    parser.add_argument("--version", action="version", version=f"ensemblekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 1
    try:
        return int(args.run(args) or 0)
    except (ValueError, DataError, OSError, TrainingError) as exc:
        # bad input (a diverging lr included): one line, exit 2, no traceback
        print(f"ensemblekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ensemblekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
