"""``nsync <command> [args]``: every stage of the pipeline behind one command.

``python -m nsync <command>`` is the same (``nsync/__main__.py``); each command is a ``main(argv)``
that takes ``--config FILE``, ``key=value`` overrides, ``--help`` and ``--print_config``, and the
packages with a ``__main__`` (``python -m nsync.fit``, ``nsync.cache``, ``nsync.judge``,
``nsync.analysis``) run the same ``main``.
The commands are listed in the order of the pipeline.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from nsync.errors import run_cli

#: command -> (module whose ``main(argv)`` runs it, one line of help). Pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("nsync.simulation.run", "simulate episodes of two or more agents into an activation cache"),
    "cache": ("nsync.cache.__main__", "inspect (info) or import (import-reference) an activation cache"),
    "reread": ("nsync.simulation.reread", "add an untrained copy's, another model's or a text embedder's states to a cache"),
    "fit": ("nsync.fit.__main__", "fit synchrony probes from every source layer to every target layer"),
    "sweep": ("nsync.sweep", "run a W&B sweep's grid locally"),
    "controls": ("nsync.analysis.controls", "run the main fit and every control on one cache"),
    "judge": ("nsync.judge.run", "score every conversation's social performance"),
    "analysis": ("nsync.analysis.performance", "correlate synchrony with social performance"),
    "report": ("nsync.analysis.report", "write one HTML or Markdown page from run folders"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: nsync <command> [--config FILE] [key=value ...] [--help]   |   nsync --version", "", "commands (in pipeline order):"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`nsync <command> --help` lists a command's options; `python -m nsync <command>` is the same."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nsync`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        from nsync import __version__

        print(f"nsync {__version__}")
        sys.exit(0)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[command][0])
    run_cli(module.main, rest)


if __name__ == "__main__":
    main()
