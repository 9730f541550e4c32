"""User-facing errors (raised for bad input, printed without a traceback by the CLIs) and warnings
(each distinct one once per run)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextvars import ContextVar


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


#: The conditions already warned about in the current run (None outside one: warn every time).
_WARNED: ContextVar[set[Hashable] | None] = ContextVar("nsync_warned", default=None)


@contextlib.contextmanager
def warnings_once_per_run() -> Iterator[None]:
    """Within the block (a fit run), :func:`warn_once` gives each distinct condition once: a fit
    meets the same condition in every chunk of source layers, split seed and direction. The state
    lives only as long as the block, so nothing carries over from one run to the next."""
    token = _WARNED.set(set())
    try:
        yield
    finally:
        _WARNED.reset(token)


def warn_once(logger: logging.Logger, key: Hashable, message: str, *args: object, level: int = logging.WARNING) -> None:
    """``logger.warning(message, *args)`` (or at ``level``), unless a message with the same ``key``
    (the condition, e.g. ``("alpha_edge", "largest")``) was given in the current
    :func:`warnings_once_per_run`."""
    seen = _WARNED.get()
    if seen is not None:
        if key in seen:
            return
        seen.add(key)
    logger.log(level, message, *args)
