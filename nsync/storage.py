"""How nsync writes to disk: one writer per folder, atomic files with the user's permissions, and
disk errors that name the file.

Every folder nsync writes into (an activation cache, a fit's run folder) is held by one
:class:`FolderLock` while it is written, so a second command gets a clear error instead of
mixing its work with the first's. Temporary files and folders are created 0600/0700 by Python's
``tempfile``; :func:`temp_dir` and :func:`write_text_atomic` give them the user's umask instead,
so a lab's other users can read a cache one of them wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nsync.errors import NsyncError

log = logging.getLogger(__name__)

#: The lock file in a locked folder; it names its holder (pid, host, start time) while held.
LOCK_FILE = ".nsync.lock"


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new temporary folder in ``parent`` with the permissions ``mkdir`` would give it."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~umask())
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a unique temporary file in the same folder, flushed to
    disk and renamed over ``path``: a reader sees the old file or the new one, never half of one,
    and two writers never share a temporary file.

    >>> import tempfile
    >>> p = write_text_atomic(Path(tempfile.mkdtemp()) / "a.json", "{}")
    >>> p.read_text(), oct(p.stat().st_mode & 0o777) == oct(0o666 & ~umask())
    ('{}', True)
    """
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def write_json_atomic(path: Path, obj: dict) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn the disk's refusals while writing under ``path`` into errors that name the file and the
    device: no space left, a read-only file system, no permission."""
    try:
        yield
    except OSError as err:
        where = Path(err.filename) if err.filename else path
        if err.errno == errno.ENOSPC:
            raise NsyncError(f"no space left on {mount_point(where)} while writing {where}; free some space and run the command again") from err
        if err.errno == errno.EROFS:
            raise NsyncError(f"cannot write {where}: {mount_point(where)} is mounted read-only; choose an output folder on a writable disk") from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise NsyncError(f"cannot write {where}: permission denied; choose an output folder you can write to") from err
        if err.errno == errno.EDQUOT:
            raise NsyncError(f"disk quota exceeded on {mount_point(where)} while writing {where}; free some space and run the command again") from err
        if err.errno is None and "requested and" in str(err):  # numpy's short write on a full disk: "N requested and M written"
            raise NsyncError(
                f"no space left on {mount_point(path)} while writing under {path} ({err}); free some space and run the command again"
            ) from err
        raise


def make_folder(path: Path, what: str) -> Path:
    """Create folder ``path`` (and its parents) for ``what`` (e.g. ``"the cache (out)"``), with an
    error that says what is wrong when it cannot be: a file in the way, no permission, read-only."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise NsyncError(f"{what} {path} cannot be a folder: {parent} is a file; choose another path")
    with disk_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise NsyncError(f"cannot write {what} {path}: permission denied; choose a folder you can write to")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class FolderLock:
    """One writer per folder: an exclusive ``flock`` on ``<folder>/.nsync.lock``.

    The kernel drops the lock when its holder exits (even by SIGKILL), so a lock is never held by
    a dead process; the file keeps naming a holder that died without releasing it, and the next
    writer says it took that stale lock over. A second writer while the first runs gets an
    :class:`~nsync.errors.NsyncError` naming the first (pid, host, start time).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with FolderLock(folder, "cache"):
    ...     try:
    ...         FolderLock(folder, "cache").acquire()
    ...     except NsyncError as err:
    ...         print(str(err).split(" is being written")[0] == f"cache {folder}")
    True
    """

    def __init__(self, folder: str | Path, what: str):
        self.folder = Path(folder)
        self.what = what
        self._fh: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def holder(self) -> dict:
        """Who holds (or last held without releasing) the lock; ``{}`` when nobody."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FolderLock:
        make_folder(self.folder, self.what)
        with disk_errors(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NsyncError(
                f"{self.what} {self.folder} is being written by {describe_holder(self.holder())}; wait for it to finish, or stop it"
            ) from None
        except OSError as err:  # a file system without flock (e.g. Lustre without -o flock): go on unguarded
            os.close(fd)
            if err.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                raise
            log.warning("%s cannot be locked (%s): nothing stops a second command from writing it at the same time", self.folder, err.strerror)
            return self
        try:
            stale = self.holder()
            if stale.get("pid") and (stale.get("host") != socket.gethostname() or not _alive(int(stale["pid"]))):
                log.warning("taking over the lock on %s: %s stopped without releasing it", self.folder, describe_holder(stale))
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
            with disk_errors(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the lock
            raise
        self._fh = fd
        return self

    def release(self) -> None:
        """Release the lock; the file is emptied first, so nobody reads it as stale."""
        if self._fh is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fh, 0)
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        os.close(self._fh)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def describe_holder(info: dict) -> str:
    """``"pid 123 on host h (since 2026-12-07 10:00:00: nsync simulate ...)"`` for a lock file's content."""
    if not info.get("pid"):
        return "another process"
    if info["pid"] == os.getpid() and info.get("host") == socket.gethostname():
        return "this process (an earlier writer in it was not closed: CacheWriter.close() or a `with` block releases it)"
    command = f": {info['command']}" if info.get("command") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')} (since {info.get('started', '?')}{command})"


def _command() -> str:
    """The running command, shortened (what the lock file says is writing the folder)."""
    args = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv and sys.argv[0] else []
    text = " ".join(args)
    return text if len(text) <= 200 else text[:197] + "..."
