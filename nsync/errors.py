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


class _ConsoleFormat(logging.Formatter):
    """Plain messages for progress notes, ``warning: ...`` for warnings and ``error: ...`` for
    errors, as ``run_cli`` prints a user error: a reader (or a grep) tells them apart."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (not the one at creation): a
    command run in-process (a test, a notebook) leaves no handler bound to a stream since closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(info: str | None = "nsync") -> None:
    """The console logging of an nsync command: warnings from anywhere, and progress notes (INFO)
    from the logger ``info`` and below it (None: warnings only); warnings and errors prefixed.
    Replaces the handler an earlier call added, so calling it twice is harmless."""
    handler = _ConsoleHandler()
    handler.setFormatter(_ConsoleFormat("%(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_nsync_console", False)]:
        root.removeHandler(old)
    handler._nsync_console = True  # type: ignore[attr-defined]  # marks the handler this function owns
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    if info is not None:
        logging.getLogger(info).setLevel(logging.INFO)


#: The conditions already warned about in the current run (None outside one: warn every time).
_WARNED: ContextVar[set[Hashable] | None] = ContextVar("nsync_warned", default=None)
#: Per condition of :func:`warn_share` in the current run: [logger, hits, total, share, message, fields].
_TALLIES: ContextVar[dict[Hashable, list] | None] = ContextVar("nsync_tallies", default=None)


@contextlib.contextmanager
def warnings_once_per_run() -> Iterator[None]:
    """Within the block (a fit run), :func:`warn_once` gives each distinct condition once: a fit
    meets the same condition in every chunk of source layers, split seed and direction; and
    :func:`warn_share` counts over all of them, warning at the block's end. The state lives only
    as long as the block, so nothing carries over from one run to the next."""
    token, tally_token = _WARNED.set(set()), _TALLIES.set({})
    try:
        yield
    finally:  # a run that fails still says what it counted until then
        for logger, hits, total, share, message, fields in (_TALLIES.get() or {}).values():
            if total and hits / total > share:
                logger.warning(message, fields | {"percent": 100 * hits / total})
        _WARNED.reset(token)
        _TALLIES.reset(tally_token)


def warn_share(logger: logging.Logger, key: Hashable, hits: int, total: int, share: float, message: str, fields: dict) -> None:
    """Warn with ``message % (fields | {"percent": ...})`` when a condition holds in more than
    ``share`` of ``total`` cells: in a :func:`warnings_once_per_run` block once, at its end, over
    every call in it (a fit's chunks of source layers, seeds and directions: one chunk alone may be
    a single layer); outside one, at once for this call's cells."""
    tallies = _TALLIES.get()
    if tallies is None:
        if total and hits / total > share:
            logger.warning(message, fields | {"percent": 100 * hits / total})
        return
    entry = tallies.setdefault(key, [logger, 0, 0, share, message, fields])
    entry[1] += hits
    entry[2] += total


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
