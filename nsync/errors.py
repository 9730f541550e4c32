"""User-facing errors: raised for bad input, printed without a traceback by the CLIs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class NsyncError(Exception):
    """An error the user can fix (bad config, missing file, unresolvable model...).

    The message must say what was wrong and how to fix it. Entry points print it and exit
    with status 2 instead of showing a traceback.
    """


def run_cli(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> None:
    """Run an entry point's ``main(argv)``; turn user errors into a message and exit code 2."""
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except NsyncError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
