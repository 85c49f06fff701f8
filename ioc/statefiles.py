"""The IOC's state files: private, one IOC at a time, kept aside when unreadable, a full disk named.

- They hold names, e-mail addresses and badges: `private_dir` and `private_file` make folders 0700
  and files 0600 whatever the umask (SQLite gives its -wal, -shm and -journal the mode of the main
  file), and strip group and others from those found; `PrivateRotatingFileHandler` does so for a
  log file and its rotations. Nothing is changed through a symlink: every mode is set with `fchmod`
  on a descriptor opened with `O_NOFOLLOW`.
- `lock_state_dir` holds `{state_dir}/lock` (with this pid in it) for the life of the process:
  a second IOC on the same state_dir refuses to start, naming the first one's pid.
- `keep_aside(path)` renames `autosave.json` to `autosave.json.corrupt-20261201T141500`
  (`-2`, `-3`, ... when that name is taken), so the IOC can start afresh while the original
  stays, byte for byte, for whoever repairs or restores it.
- `disk_full(error)` finds the no-space error (ENOSPC, EDQUOT, SQLITE_FULL) behind an error;
  `write_transaction(db)` is one SQLite write transaction that never hides the error that stopped it.
- `FOLDER_FLAGS` and `READ_FLAGS` open a folder or a file to read without following a symlink (and
  without blocking on a FIFO swapped in): for the state files, the transfer's walks and the records.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging.handlers
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ASIDE_MARK = ".corrupt-"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
LOCK_NAME = "lock"
# The files the IOC keeps in state_dir; a name that starts with one of these (its -wal, a copy kept
# aside, a temporary) is a state file too. Everything in state_dir/logs is.
STATE_FILES = ("registry.sqlite", "transfers.sqlite", "catalog.sqlite", "dm-files.sqlite", "autosave.json",
               "globus-transfer.json", "walks.json", LOCK_NAME)  # fmt: skip
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO planted in its place never blocks
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a folder, never through a symlink
READ_FLAGS = os.O_RDONLY | os.O_NOCTTY | _NO_FOLLOW  # a file to read; check with fstat that it is a regular one
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_IOERR_SHMSIZE = 4874  # SQLite could not grow a database's -shm file: what a full disk does at open

log = logging.getLogger(__name__)


def keep_aside(path: Path, companions: Sequence[str] = ()) -> Path:
    """Rename `path` to a new, unused `<name>.corrupt-<local time>` name beside it; return that name.

    `companions` are suffixes of files that belong to it (SQLite's `-wal`, `-shm`):
    each follows as `<new name><suffix>`, so the kept copy opens whole. Raises
    OSError when the rename fails (the original is then untouched).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = path.with_name(f"{path.name}{ASIDE_MARK}{stamp}")
    aside, number = base, 1
    while any(os.path.lexists(f"{aside}{suffix}") for suffix in ("", *companions)):
        number += 1
        aside = base.with_name(f"{base.name}-{number}")
    if os.path.lexists(path):
        os.rename(path, aside)
    for suffix in companions:
        companion = Path(f"{path}{suffix}")
        if os.path.lexists(companion):
            os.rename(companion, f"{aside}{suffix}")
    return aside


# ------------------------------------------------------------------ private files and folders


def private_dir(path: Path) -> Path:
    """Folder `path`, made 0700 if missing (its parents as the umask says), else stripped of group and
    others' access. A symlink at `path` is not followed: OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR)
        created = True
    except FileExistsError:
        created = False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
    try:
        _make_private(fd, created=created)
    finally:
        os.close(fd)
    return path


def private_file(path: Path, *, create: bool = True) -> Path:
    """File `path`, made empty and 0600 if missing (when `create`; else FileNotFoundError), else stripped
    of group and others' access (a folder or other non-file there is left alone). A symlink at `path`
    is not followed: OSError."""
    path = Path(path)
    created = False
    if create:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, PRIVATE_FILE)
            created = True
        except FileExistsError:
            pass
    if not created:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    try:
        _make_private(fd, created=created)
    finally:
        os.close(fd)
    return path


def tighten_state(state_dir: Path) -> list[str]:
    """Strip group and others' access from the state files already in `state_dir` and in its logs/
    (left readable by an earlier version or another umask); symlinks are skipped, never followed.
    Returns what could not be changed, one sentence each."""
    failures = []
    for folder, wanted in ((state_dir, lambda name: name.startswith(STATE_FILES)), (state_dir / "logs", None)):
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries if wanted is None or wanted(entry.name)]
        except FileNotFoundError:
            continue
        except OSError as error:
            failures.append(f"{folder}: {error.strerror}")
            continue
        for name in names:
            try:
                private_file(folder / name, create=False)
            except FileNotFoundError:
                pass  # gone meanwhile (a temporary, a -wal): never made again here
            except OSError as error:
                if error.errno != errno.ELOOP:  # a symlink: not followed, not changed
                    failures.append(f"{folder / name}: {error.strerror}")
    return failures


def _make_private(fd: int, *, created: bool) -> None:
    """Exactly 0600/0700 for what was just created; only group and others' bits off for what was found."""
    found = os.fstat(fd)
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        return
    mode = stat.S_IMODE(found.st_mode)
    wanted = (PRIVATE_DIR if stat.S_ISDIR(found.st_mode) else PRIVATE_FILE) if created else mode & 0o700
    if mode != wanted:
        os.fchmod(fd, wanted)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file whose file and rotations are 0600 whatever the umask, never opened through a symlink.

    When the file cannot be written (a full disk), that is said once on stderr, not with a
    traceback for every record, and again only after a record was written in between.
    """

    def __init__(self, *args, **kwargs):
        self._failing = False
        self._failed_now = False
        super().__init__(*args, **kwargs)

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW, PRIVATE_FILE)
        try:
            found = os.fstat(fd)
            if stat.S_IMODE(found.st_mode) != PRIVATE_FILE:
                os.fchmod(fd, PRIVATE_FILE)
            os.set_blocking(fd, True)
            return open(fd, self.mode, encoding=self.encoding, errors=self.errors)  # noqa: SIM115 (the handler closes it)
        except BaseException:
            os.close(fd)
            raise

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)
        if self._failing and not self._failed_now:
            self._failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed_now = True
        if self._failing:
            return
        self._failing = True
        error = sys.exc_info()[1]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
        sys.stderr.write(f"dmagic-ioc: cannot write the log file {self.baseFilename}: {reason}; "
                         "said again only after it worked\n")  # fmt: skip


# ------------------------------------------------------------------ one IOC per state_dir


class StateDirInUse(Exception):
    """Another process holds the state_dir's lock: the message names its pid."""


def lock_state_dir(state_dir: Path) -> int:
    """Hold `state_dir`/lock, with this process's pid in it, for the life of the process; return its
    descriptor (keep it open). The kernel frees an `flock` when the holder ends, kill -9 included.

    Raises StateDirInUse, naming the holder's pid, when another process holds it; OSError when the
    file cannot be opened or locked.
    """
    path = Path(state_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.pread(fd, 24, 0).decode("ascii", "replace").strip()
            holder = f"pid {said}" if said.isdigit() else "its pid not written yet"
            raise StateDirInUse(
                f"ioc.state_dir {state_dir} is in use by another dmagic-ioc ({holder}, holding {path}): "
                "stop it first, or give this one another state_dir"
            ) from None
        _make_private(fd, created=False)
        pid = f"{os.getpid()}\n".encode()
        try:
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError:
            pass  # a full state_dir: the lock holds all the same, only a second IOC cannot name this pid
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------ a full disk


def disk_full(error: BaseException) -> BaseException | None:
    """The error behind `error` (itself, or what caused it) that says a disk or quota is full: OSError
    ENOSPC or EDQUOT, or SQLite's SQLITE_FULL or SQLITE_IOERR_SHMSIZE; None when there is none."""
    for cause in causes(error):
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return cause
        if isinstance(cause, sqlite3.Error) and _sqlite_full(cause):
            return cause
    return None


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it, and so on: the chain a traceback shows."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on `db` (opened with isolation_level=None): all of it committed, or none of it.
    The error that stopped it is the one raised, never "cannot rollback - no transaction is active" (on a
    full disk SQLite has rolled back already)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    """Undo `db`'s open transaction, unless SQLite already has."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as error:
            log.warning("rollback failed: %s", error)


def _sqlite_full(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None) or 0  # Python 3.11 and later
    return code & 0xFF == sqlite3.SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE
