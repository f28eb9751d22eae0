"""One module per CLI sub-command. Each defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; `ensemblekit.cli` lists them in ``COMMANDS``. Shared options live in
`ensemblekit.commands.common`."""
