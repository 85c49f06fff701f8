"""The built-in transfer engine: raw data folders -> DM storage, whole files only.

`LocalTransfer` implements `ports.Transfer` inside the IOC's process: one
engine thread watches the source folders and feeds a pool of copy workers;
an SQLite ledger records every file sent and the running transfer, so that a
restart (even after kill -9) resumes it without sending a file twice.

Change detection: an incremental scan, not inotify (watchdog). Reasons:
- the detector usually writes on `dm.data_host` and the IOC host sees the
  data over NFS/GPFS, where inotify reports nothing written by other hosts;
- inotify needs a watch per directory (`fs.inotify.max_user_watches`), races
  with directories created before their watch is set, and drops events on
  queue overflow: a full, correct scan is needed anyway, for the first pass and
  as the recovery path. Once the scan is cheap, inotify saves only the poll
  interval (0.5 s) of latency, which the 3 s arrival target does not need.
The scan keeps each directory's mtime and entry names; a poll stats every
known directory and lists only those whose mtime changed (adding or removing
a name changes it), and for a few seconds after a change, against coarse
timestamps. New names are stat'ed; files waiting to settle are stat'ed; a
bounded round-robin audit re-stats already-sent files so that a file rewritten
in place (which leaves its directory's mtime alone) is sent again. Per poll
the cost is O(directories + unsettled files + audit budget), not O(files sent).

A file is sent once its size and mtime have not changed for `settle_time`
(an mtime already that old counts), copied to `.NAME.part-XXXXXXXX` next to
its destination, checked (size, optionally a blake2b checksum), given the
source's mtime and mode, made durable, then renamed into place: nobody sees a
partial file, even after a power failure. Files are handed to the workers in
chunks (up to 64 small files of one source), and a chunk's copies are made
durable together by one syncfs(2) of the destination filesystem before any of
them is renamed (a file alone, e.g. a large one, by its own fsync): on many
small files a per-file fsync cost more than the copy. Renames are made durable
(fsync of their folders) before the ledger batch that records them is
committed. A file already in the ledger (and whose copy is still there: one
stat per ledger row, at the file's first sighting in a run), or already at its
destination with the same size and mtime (a copy renamed just before a crash,
before its ledger batch was committed), is not sent again. `forget` drops the
ledger rows of sources whose storage was deleted (Delete of an experiment).

Confinement: a transfer reads only inside its source folders. `start` refuses
a source folder (DataDirectory, its `_rec`) that is a symbolic link or is not
inside `dm.data_top_dir`. Every folder and file is then reached from the top
folder's descriptor one name at a time with O_NOFOLLOW (openat, scandir and
stat on folder descriptors), so a symbolic link inside, or a folder swapped
for one in the middle of a walk, is never followed: it is skipped, with a
warning naming it and a count in the summary. Special files are skipped too.

Storage: the engine never makes an experiment's storage, nor the destination
folders Create made in it (`data/`, `analysis/`); it makes only subfolders
below them. Copies are written through descriptors opened from the storage
folder after checking that its marker (written by Create, adapters/local_dm.py)
holds the id recorded at start, once per poll and again by each batch of
copies. A marker, not the device id: a device id cannot tell a storage deleted
and made again on the same disk, and inode numbers are reused. A storage that
is missing, unmarked or marked anew (deleted; an unmounted disk, whose mount
point is an empty folder of another disk) is an Error naming it: nothing is
written, the files wait. A batch that holds the storage's descriptor when it
is removed cannot make a name in it; when its disk is unmounted (`umount -l`),
the batch lands on the detached disk, never under the mount point.

File names are bytes on Linux: a name that is not UTF-8 is sent under the
same bytes (raw data is never dropped for its name; the copy keeps the name
the acquisition software wrote), recorded in the ledger as those bytes (a
BLOB), and shown with its undecodable bytes as \\xNN (Status, Daq:LastFile, the
log, where a warning names it).

Ledger recovery: a ledger that cannot be read (garbage, truncated, corrupt
pages: a header check and `PRAGMA quick_check` at open, about 0.5 s per
million files) is renamed aside (`transfers.sqlite.corrupt-<time>`, never
overwritten) and a fresh one started; DaqState shows Error (MAJOR) saying so
until the next DaqStart or DaqStop. The transfer it recorded as running is
not resumed. Files are not sent twice for it: a file whose copy is already at
its destination with the same size and mtime (copies keep the source's mtime
to the nanosecond) counts as sent, as after a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import queue
import random
import re
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..ioc.model import DMError, Experiment, InputError
from ..ioc.ports import TransferProgress
from ..ioc.statefiles import keep_aside
from .local_dm import FOLDER_FLAGS, STORAGE_MARKER, read_storage_marker

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
COPY_CHUNK = 64 * 1024 * 1024  # bytes per copy_file_range call; a stop is seen between chunks
BUFFER_SIZE = 4 * 1024 * 1024  # userspace copy and checksum buffer
PART_NAME = re.compile(r"^\..*\.part-[0-9a-f]{8}$", re.DOTALL)
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}
# A source file: never through a symlink; O_NONBLOCK so that a FIFO put in its place cannot block the open.
SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# File states in the engine
PENDING, QUEUED, DONE, FAILED = "pending", "queued", "done", "failed"
# Copy outcomes
COPIED, CHANGED, VANISHED, CANCELLED = "copied", "changed", "vanished", "cancelled"
NO_STORAGE = "no storage"  # the storage is not the one Create made: nothing written, the file waits


def shown(text: str) -> str:
    """`text` (a path) as any UTF-8 PV or log takes it: undecodable bytes as \\xNN, control characters escaped."""
    if text.isprintable():
        return text
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that fsdecode did not make
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# --------------------------------------------------------------------------
# Folders reached without following symlinks


class SymlinkRefused(OSError):
    """A symbolic link where a folder or file of a transfer was expected: not followed."""


def _is_symlink(folder_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_child(folder_fd: int, name: str, path: str) -> int:
    """Open folder `name` of the folder `folder_fd` without following a symlink; `path` names it in errors."""
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=folder_fd)
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(folder_fd, name):
            raise SymlinkRefused(errno.ELOOP, "a symbolic link, not followed", path) from None
        raise OSError(error.errno, error.strerror, path) from None


def open_folder(path: str, beneath: str | None = None) -> int:
    """A descriptor of folder `path`, reached from folder `beneath` (default: its parent) one name at a
    time, following no symlink below `beneath`. Raises SymlinkRefused, FileNotFoundError, ..."""
    path = os.path.normpath(path)
    top = os.path.normpath(beneath) if beneath is not None else os.path.dirname(path)
    rel = os.path.relpath(path, top)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{path} is not inside {top}")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if rel == os.curdir:
        return fd
    walked = top
    try:
        for name in rel.split(os.sep):
            walked = os.path.join(walked, name)
            child = _open_child(fd, name, walked)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _inside(path: str, folder: str) -> bool:
    """`path` is strictly inside `folder` (both normalized, absolute)."""
    return path != folder and os.path.commonpath([path, folder]) == folder


class _Folders:
    """Descriptors of the folders below one open folder, for one batch of copies; with `make`, a
    missing folder below it is made (never the top one). Reached without following symlinks."""

    def __init__(self, path: str, fd: int, *, make: bool):
        self.path, self.make = path, make
        self.fds = {"": fd}

    def get(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            parent, _, name = rel.rpartition("/")
            parent_fd = self.get(parent)
            path = os.path.join(self.path, rel)
            try:
                fd = _open_child(parent_fd, name, path)
            except FileNotFoundError:
                if not self.make:
                    raise
                try:
                    os.mkdir(name, dir_fd=parent_fd)
                except FileExistsError:
                    pass  # made meanwhile by another batch
                except OSError as error:
                    raise OSError(error.errno, error.strerror, path) from None
                fd = _open_child(parent_fd, name, path)
            self.fds[rel] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


# --------------------------------------------------------------------------
# Ledger

SQLITE_HEADER = b"SQLite format 3\x00"
LEDGER_COMPANIONS = ("-wal", "-shm")  # files beside the ledger that hold part of it
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class LedgerUnreadable(Exception):
    """The ledger file is there but cannot be read as a ledger (garbage, truncated, corrupt pages)."""


class Definition(NamedTuple):
    """The running transfer, as the ledger records it for a resume."""

    experiment: str
    sources: dict[str, str]
    once: bool
    storage: str = ""  # the experiment's storage folder ('' in a ledger of schema 1)
    marker: str = ""  # the id of its marker at start


class Ledger:
    """SQLite record of sent files and of the running transfer's definition.

    Rows are buffered and committed in batches (`BATCH_FILES` rows or
    `BATCH_SECONDS`); a lost batch costs nothing since a destination file with
    the source's size and mtime counts as sent (one stat each at resume), so
    the batches are large: each costs a commit and folder fsyncs. Thread-safe.
    Relative paths are stored as their bytes (a name need not be UTF-8).
    Raises LedgerUnreadable when the file is not a readable ledger.
    """

    BATCH_FILES = 1000
    BATCH_SECONDS = 0.5

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, int, int, str, float]] = []
        self._last_commit = time.monotonic()
        _check_header(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            rows = self._db.execute("PRAGMA quick_check(1)").fetchall()
            if rows != [("ok",)]:
                said = " ".join(str(rows[0][0]).split()) if rows else "no answer"
                raise LedgerUnreadable(f"integrity check: {said[:120]}")
            self._migrate()
            try:
                self._db.execute("SELECT root, relpath, size, mtime_ns, dest, sent_at FROM files LIMIT 0")
                self._db.execute("SELECT experiment, sources, once, started_at, storage, marker FROM running LIMIT 0")
            except sqlite3.OperationalError as error:
                raise LedgerUnreadable(f"not a transfer ledger: {error}") from None
        except sqlite3.DatabaseError as error:
            self._db.close()
            if error.sqlite_errorcode & 0xFF in _UNREADABLE:
                raise LedgerUnreadable(str(error)) from None
            raise
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DMError(f"transfer ledger {self.path} has schema {version}, newer than this IOC's")
        if version == SCHEMA_VERSION:
            return
        with self._transaction():
            if version < 1:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS files (root TEXT NOT NULL, relpath BLOB NOT NULL,"
                    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, dest TEXT NOT NULL,"
                    " sent_at REAL NOT NULL, PRIMARY KEY (root, relpath)) WITHOUT ROWID"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS running (id INTEGER PRIMARY KEY CHECK (id = 1),"
                    " experiment TEXT NOT NULL, sources TEXT NOT NULL, once INTEGER NOT NULL,"
                    " started_at REAL NOT NULL, storage TEXT NOT NULL DEFAULT '', marker TEXT NOT NULL DEFAULT '')"
                )
            else:  # 1 -> 2: relative paths as bytes; the storage and its marker id in the running row
                self._db.execute("UPDATE files SET relpath = CAST(relpath AS BLOB) WHERE typeof(relpath) = 'text'")
                self._db.execute("ALTER TABLE running ADD COLUMN storage TEXT NOT NULL DEFAULT ''")
                self._db.execute("ALTER TABLE running ADD COLUMN marker TEXT NOT NULL DEFAULT ''")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def running(self) -> Definition | None:
        """The running transfer, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT experiment, sources, once, storage, marker FROM running WHERE id = 1"
            ).fetchone()
        if row is None:
            return None
        return Definition(row[0], json.loads(row[1]), bool(row[2]), row[3], row[4])

    def set_running(
        self, experiment: str, sources: Mapping[str, str], once: bool, storage: str = "", marker: str = ""
    ) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO running (id, experiment, sources, once, started_at, storage, marker)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)",
                (experiment, json.dumps(dict(sources)), int(once), time.time(), storage, marker),
            )

    def clear_running(self) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM running")

    def sent(self, root: str, dest: str) -> dict[str, tuple[int, int]]:
        """Files of `root` sent to `dest`: {relpath: (size, mtime_ns)}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT relpath, size, mtime_ns FROM files WHERE root = ? AND dest = ?", (root, dest)
            ).fetchall()
        return {os.fsdecode(relpath): (size, mtime_ns) for relpath, size, mtime_ns in rows}

    def forget(self, sources: Mapping[str, str]) -> int:
        """Drop the rows of files sent from each root to its destination, in one transaction; return how many.

        Rows still buffered for them are dropped too, so that a later commit cannot bring them back.
        """
        pairs = set(sources.items())
        with self._lock:
            with self._transaction():
                removed = sum(
                    self._db.execute("DELETE FROM files WHERE root = ? AND dest = ?", pair).rowcount for pair in pairs
                )
            self._rows = [row for row in self._rows if (row[0], row[4]) not in pairs]
        return removed

    def add(self, root: str, relpath: str, size: int, mtime_ns: int, dest: str) -> None:
        """Buffer one sent file; `commit_if_due` or `commit` writes it."""
        with self._lock:
            self._rows.append((root, relpath, size, mtime_ns, dest, time.time()))

    def due(self) -> bool:
        with self._lock:
            return bool(self._rows) and (
                len(self._rows) >= self.BATCH_FILES or time.monotonic() - self._last_commit >= self.BATCH_SECONDS
            )

    def commit(self) -> int:
        """Write the buffered rows in one transaction; they stay buffered if it fails."""
        with self._lock:
            rows, self._last_commit = self._rows, time.monotonic()
            if not rows:
                return 0
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO files (root, relpath, size, mtime_ns, dest, sent_at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (root, relpath) DO UPDATE SET size = excluded.size,"
                    " mtime_ns = excluded.mtime_ns, dest = excluded.dest, sent_at = excluded.sent_at",
                    [(root, os.fsencode(rel), size, mtime, dest, at) for root, rel, size, mtime, dest, at in rows],
                )
            self._rows = []
            return len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check_header(path: Path) -> None:
    """Refuse a file that SQLite would not read as a database, before SQLite opens (and may write) it."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # a new ledger
    if not head:
        try:
            wal = os.stat(f"{path}-wal").st_size
        except FileNotFoundError:
            wal = 0
        if not wal:
            raise LedgerUnreadable("the file is empty")
    elif head != SQLITE_HEADER:
        raise LedgerUnreadable("not an SQLite file")


# --------------------------------------------------------------------------
# Copying files


class _Cancelled(Exception):
    pass


class StorageUnavailable(Exception):
    """The experiment's storage is not the one Create made (missing, unmarked, marked anew): nothing is written."""


def part_name(name: str) -> str:
    """The temporary name a copy of `name` is written under, in the same folder."""
    stem = os.fsdecode(os.fsencode(name)[:200])
    return f".{stem}.part-{random.getrandbits(32):08x}"


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), if it reports writeback errors (Linux >= 5.8); else None (fsync per file)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        release = re.match(r"(\d+)\.(\d+)", os.uname().release)
        if release is None or (int(release[1]), int(release[2])) < (5, 8):
            return None  # older kernels' syncfs returns 0 even when writeback failed
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def syncfs(fd: int) -> None:
    """Write back and flush everything dirty on `fd`'s filesystem; raise the writeback errors since `fd` was opened."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _SYNCFS(fd) != 0:  # ctypes releases the GIL for the call
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def copy_file(
    src: str,
    dst: str,
    expected: tuple[int, int],
    *,
    checksum: bool = False,
    cancel: threading.Event | None = None,
) -> str:
    """Copy one file into an existing folder; see `copy_files`. Returns its outcome; a failure raises OSError."""
    (src_folder, name), dst_folder = os.path.split(src), os.path.dirname(dst)
    if os.path.basename(dst) != name:
        raise ValueError(f"copy_file keeps the name: {src} -> {dst}")
    outcome, reason = copy_files(src_folder, dst_folder, [(name, expected)], checksum=checksum, cancel=cancel)[0]
    if outcome == FAILED:
        raise OSError(errno.EIO, reason)
    return outcome


def copy_files(
    source: str,
    dest: str,
    items: Sequence[tuple[str, tuple[int, int]]],
    *,
    checksum: bool = False,
    cancel: threading.Event | None = None,
    open_source: Callable[[], int] | None = None,
    open_dest: Callable[[], int] | None = None,
) -> list[tuple[str, str]]:
    """Copy each (relpath, expected (size, mtime_ns)) from folder `source` to the same relpath under `dest`,
    through a durable, verified temporary file and a rename.

    `open_source` and `open_dest` give the two folders' descriptors (default:
    `open_folder`); every folder and file below them is reached by name from
    them, never through a symlink. Folders missing below `dest` are made, never
    `dest` itself. `open_dest` may raise StorageUnavailable: every item is then
    NO_STORAGE with its message, nothing written.

    Returns an (outcome, reason) per item: COPIED, CHANGED (the source is not
    `expected` or changed during the copy: nothing written), VANISHED (gone, or
    no longer a regular file reached without a symlink), CANCELLED, NO_STORAGE,
    or FAILED with a sentence; no temporary file is left behind.

    Three phases, so that several small files share one flush:
    1. each file is copied to `.NAME.part-XXXXXXXX` beside its destination,
       given the source's mode and mtime, and its size (or checksum) checked;
    2. the copies' data and inodes are made durable: one syncfs(2) per
       destination filesystem for the whole batch (one fsync for a single
       file, or per file where syncfs is missing). syncfs reports writeback
       errors that happened since its fd was opened, so that fd is a dup of
       the first temporary file's, opened before any of the batch was written;
    3. each source is stat'ed again (it must still be `expected`), and its
       copy renamed into place.
    Data is durable BEFORE its rename, as with an fsync per file: a power
    failure can lose a rename (the engine makes renames durable before it
    records them in its ledger), never leave a name pointing at missing data.
    A file renamed but not yet in the ledger is then either absent (re-sent)
    or whole with the source's size and mtime (counted as sent).
    """
    results: list[tuple[str, str]] = [(CANCELLED, "")] * len(items)
    try:
        sources = _Folders(source, (open_source or functools.partial(open_folder, source))(), make=False)
    except OSError as error:
        if _gone(error):
            return [(VANISHED, "")] * len(items)
        return [(FAILED, f"cannot read {shown(source)}: {_reason(error, source)}")] * len(items)
    try:
        dests = _Folders(dest, (open_dest or functools.partial(open_folder, dest))(), make=True)
    except StorageUnavailable as error:
        sources.close()
        return [(NO_STORAGE, str(error))] * len(items)
    except OSError as error:
        sources.close()
        return [(FAILED, f"cannot copy into {shown(dest)}: {_reason(error, dest)}")] * len(items)
    written: list[tuple[int, str]] = []  # (index, temporary name) after phase 1
    per_file = len(items) == 1 or _SYNCFS is None
    sync_fds: dict[int, int] = {}  # st_dev -> fd for syncfs
    try:
        for index, (rel, expected) in enumerate(items):
            if cancel is not None and cancel.is_set():
                return results
            try:
                outcome, tmp = _write_aside(sources, dests, rel, expected, checksum, cancel,
                                            None if per_file else sync_fds)  # fmt: skip
            except _Cancelled:
                return results
            except OSError as error:
                results[index] = _failure(error, source, dest, rel)
                continue
            if tmp:
                written.append((index, tmp))  # CANCELLED until renamed
            else:
                results[index] = (outcome, "")
        if cancel is not None and cancel.is_set():
            return results
        try:
            for fd in sync_fds.values():
                syncfs(fd)
        except OSError as error:
            for index, _tmp in written:
                src, dst = (shown(os.path.join(folder, items[index][0])) for folder in (source, dest))
                results[index] = (FAILED, f"cannot copy {src} to {dst}: cannot flush the copies: {_reason(error)}")
            return results
        for position, (index, tmp) in enumerate(written):
            rel, expected = items[index]
            folder, _, name = rel.rpartition("/")
            try:
                try:
                    after = os.stat(name, dir_fd=sources.get(folder), follow_symlinks=False)
                except OSError as error:
                    raise _SourceError(error) from None
                if (after.st_size, after.st_mtime_ns) != expected or not stat.S_ISREG(after.st_mode):
                    results[index] = (CHANGED, "")
                    continue
                folder_fd = dests.get(folder)
                os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
                written[position] = (index, "")
                results[index] = (COPIED, "")
            except OSError as error:
                results[index] = _failure(error, source, dest, rel)
        return results
    finally:
        for fd in sync_fds.values():
            os.close(fd)
        for index, tmp in written:
            if tmp:
                _unlink_quietly(dests.get(items[index][0].rpartition("/")[0]), tmp)
        sources.close()
        dests.close()


def _gone(error: OSError) -> bool:
    """The file or folder a copy reads is no longer there as a real one (removed, or a symlink now)."""
    return isinstance(error, (FileNotFoundError, NotADirectoryError, SymlinkRefused)) or error.errno == errno.ELOOP


def _failure(error: OSError, source: str, dest: str, rel: str) -> tuple[str, str]:
    if isinstance(error, _SourceError):
        if _gone(error.error):
            return VANISHED, ""
        error = error.error
    src, dst = os.path.join(source, rel), os.path.join(dest, rel)
    return FAILED, f"cannot copy {shown(src)} to {shown(dst)}: {_reason(error, src, dst)}"


class _SourceError(OSError):
    """An error reading the source of a copy (not writing its destination)."""

    def __init__(self, error: OSError):
        super().__init__(error.errno, error.strerror, error.filename)
        self.error = error


def _write_aside(
    sources: _Folders,
    dests: _Folders,
    rel: str,
    expected: tuple[int, int],
    checksum: bool,
    cancel: threading.Event | None,
    sync_fds: dict[int, int] | None,
) -> tuple[str, str]:
    """Phase 1 of `copy_files`: (COPIED, temporary name in rel's destination folder), or (CHANGED, "").

    With `sync_fds` None the copy is fsync'ed here; otherwise its filesystem's
    fd is added to `sync_fds` for one syncfs later.
    """
    folder, _, name = rel.rpartition("/")
    try:
        src_fd = os.open(name, SOURCE_FLAGS, dir_fd=sources.get(folder))
    except OSError as error:
        raise _SourceError(error) from None
    try:
        before = os.fstat(src_fd)
        if not stat.S_ISREG(before.st_mode):
            raise _SourceError(FileNotFoundError(errno.ENOENT, "no longer a regular file", rel))
        if (before.st_size, before.st_mtime_ns) != expected:
            return CHANGED, ""
        folder_fd = dests.get(folder)
        tmp = part_name(name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        try:
            try:
                if sync_fds is not None:
                    device = os.fstat(fd).st_dev
                    if device not in sync_fds:
                        sync_fds[device] = os.dup(fd)  # before this batch's data is written: see copy_files
                copied, source_digest = _copy_data(src_fd, fd, before.st_size, checksum, cancel)
                os.fchmod(fd, stat.S_IMODE(before.st_mode))
                os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
                if sync_fds is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if copied != before.st_size:
                raise OSError(errno.EIO, f"copy has {copied} bytes, source {before.st_size}")
            if source_digest is not None and _digest(folder_fd, tmp) != source_digest:
                raise OSError(errno.EIO, "checksum of the copy differs from the source")
            done, tmp = tmp, ""
            return COPIED, done
        finally:
            if tmp:
                _unlink_quietly(folder_fd, tmp)
    finally:
        os.close(src_fd)


def _copy_data(
    src_fd: int, dst_fd: int, size: int, checksum: bool, cancel: threading.Event | None
) -> tuple[int, bytes | None]:
    """Copy up to `size` bytes in the kernel when possible; with `checksum`, through a buffer, hashing.

    Returns (bytes copied, fewer if the source shrank; the source's digest or None).
    """
    offset = 0
    if not checksum:
        try:
            while offset < size:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
                count = os.copy_file_range(src_fd, dst_fd, min(COPY_CHUNK, size - offset), offset, offset)
                if count == 0:
                    return offset, None  # the source shrank: the size check refuses the copy
                offset += count
            return offset, None
        except OSError as error:
            if offset or error.errno not in _NO_KERNEL_COPY:
                raise
            log.debug("copy_file_range unavailable (%s); copying through a buffer", error)
    hasher = hashlib.blake2b() if checksum else None
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    os.lseek(src_fd, 0, os.SEEK_SET)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    while offset < size:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        count = os.readv(src_fd, [view[: min(BUFFER_SIZE, size - offset)]])
        if count == 0:
            break
        chunk = view[:count]
        if hasher is not None:
            hasher.update(chunk)
        while chunk:
            chunk = chunk[os.write(dst_fd, chunk) :]
        offset += count
    return offset, hasher.digest() if hasher is not None else None


def _reason(error: OSError, *paths: str) -> str:
    """`No space left on device`, naming the path at fault when it is not one of `paths`."""
    reason = error.strerror or str(error)
    if error.filename and os.fsdecode(error.filename) not in paths:
        reason += f" ({shown(os.fsdecode(error.filename))})"
    return reason


def _digest(folder_fd: int, name: str) -> bytes:
    with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd), "rb") as file:
        return hashlib.file_digest(file, hashlib.blake2b).digest()


def _unlink_quietly(folder_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("cannot remove temporary file %s", shown(name), exc_info=True)


def remove_part_files(folder_fd: int) -> int:
    """Remove leftover temporary copies under the folder open as `folder_fd` (after a kill); return how many."""
    removed = 0
    for _path, _dirs, names, dir_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
        for name in names:
            if PART_NAME.match(name):
                _unlink_quietly(dir_fd, name)
                removed += 1
    return removed


# --------------------------------------------------------------------------
# Scanning a source folder


@dataclass(slots=True)
class _Dir:
    mtime_ns: int = -1
    files: dict[str, int] = field(default_factory=dict)  # name -> inode
    subdirs: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # symlinks and special files: not followed
    recheck_until: float = 0.0


class Tree:
    """Incremental view of one source folder: what appeared or disappeared since the last poll.

    Only directories whose mtime changed (or changed within `RECHECK_SECONDS`,
    against coarse timestamps) are listed again; only new names, and names
    whose inode changed (a file replaced by a rename), are stat'ed. Folders are
    listed through descriptors reached from the root (itself from `beneath`)
    without following a symlink; symlinks and special files are skipped, each
    with one warning, and kept in `skipped`.
    """

    RECHECK_SECONDS = 2.0

    def __init__(self, root: str, beneath: str | None = None):
        self.root = root
        self.beneath = beneath
        self.dirs: dict[str, _Dir] = {}
        self.problems: dict[str, str] = {}  # folders that cannot be read: relpath -> why
        self.skipped: dict[str, str] = {}  # relpath -> what it is, for entries not followed

    def poll(self) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(new files as (relpath, size, mtime_ns), removed relpaths).

        FileNotFoundError if the root went, SymlinkRefused if it is (or is reached through) a symlink.
        """
        found: list[tuple[str, int, int]] = []
        removed: list[str] = []
        now = time.monotonic()
        root_fd = open_folder(self.root, self.beneath)
        try:
            if not self.dirs:
                self._list("", root_fd, os.fstat(root_fd), now, found, removed)
                return found, removed
            for rel in list(self.dirs):
                known = self.dirs.get(rel)
                if known is None:
                    continue  # dropped with its parent during this poll
                if rel:
                    try:  # metadata only: what is read is reached through descriptors
                        st = os.stat(self._path(rel), follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        self._drop(rel, removed)
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        self._drop(rel, removed)  # replaced by a file or a symlink: its parent's listing says which
                        continue
                else:
                    st = os.fstat(root_fd)
                if st.st_mtime_ns != known.mtime_ns or now < known.recheck_until:
                    self._relist(rel, root_fd, st, now, found, removed)
        finally:
            os.close(root_fd)
        return found, removed

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _relist(
        self, rel: str, root_fd: int, st: os.stat_result, now: float, found: list, removed: list[str]
    ) -> None:
        if not rel:
            self._list(rel, root_fd, st, now, found, removed)
            return
        fd, walked = os.dup(root_fd), ""
        try:
            for name in rel.split("/"):
                walked = f"{walked}/{name}" if walked else name
                child = _open_child(fd, name, self._path(walked))
                os.close(fd)
                fd = child
        except (FileNotFoundError, NotADirectoryError, SymlinkRefused):
            os.close(fd)
            self._drop(rel, removed)
            return
        except OSError as error:
            os.close(fd)
            self._unreadable(rel, error)
            return
        try:
            self._list(rel, fd, st, now, found, removed)
        finally:
            os.close(fd)

    def _unreadable(self, rel: str, error: OSError) -> None:
        self.problems[rel] = f"cannot read source folder {shown(self._path(rel))}: {error.strerror or error}"
        self.dirs.setdefault(rel, _Dir()).mtime_ns = -1  # listed again at the next poll

    def _list(
        self, rel: str, fd: int, st: os.stat_result, now: float, found: list[tuple[str, int, int]], removed: list[str]
    ) -> None:
        """List the folder open as `fd`; recurse into its new subfolders."""
        known = self.dirs.setdefault(rel, _Dir())
        if st.st_mtime_ns != known.mtime_ns:
            known.recheck_until = now + self.RECHECK_SECONDS
        known.mtime_ns = st.st_mtime_ns
        try:
            with os.scandir(fd) as listing:
                entries = list(listing)
        except OSError as error:
            self._unreadable(rel, error)
            return
        self.problems.pop(rel, None)
        files: dict[str, int] = {}
        subdirs: set[str] = set()
        skipped: dict[str, bool] = {}  # name -> is a symlink
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.add(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    if not PART_NAME.match(entry.name):
                        files[entry.name] = entry.inode()
                else:
                    skipped[entry.name] = entry.is_symlink()
            except OSError:
                continue
        prefix = f"{rel}/" if rel else ""
        for name, inode in list(files.items()):
            if known.files.get(name) == inode:
                continue
            try:
                entry_stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                del files[name]
                continue
            if not stat.S_ISREG(entry_stat.st_mode):
                del files[name]  # replaced since the listing: seen at the next one
                continue
            found.append((prefix + name, entry_stat.st_size, entry_stat.st_mtime_ns))
        self._note_skipped(prefix, known.skipped, skipped)
        known.skipped = set(skipped)
        removed.extend(prefix + name for name in known.files.keys() - files.keys())
        for name in known.subdirs - subdirs:
            self._drop(prefix + name, removed)
        known.files, new_subdirs, known.subdirs = files, subdirs - known.subdirs, subdirs
        for name in new_subdirs:
            child_rel = prefix + name
            try:
                child = _open_child(fd, name, self._path(child_rel))
            except (FileNotFoundError, NotADirectoryError, SymlinkRefused):
                known.subdirs.discard(name)  # gone or replaced since the listing: seen at the next one
                continue
            except OSError as error:
                self._unreadable(child_rel, error)
                continue
            try:
                self._list(child_rel, child, os.fstat(child), now, found, removed)
            finally:
                os.close(child)

    def _note_skipped(self, prefix: str, before: set[str], now: dict[str, bool]) -> None:
        """Warn once about each new entry not followed; forget those that went."""
        for name in before - now.keys():
            self.skipped.pop(prefix + name, None)
        for name in now.keys() - before:
            what = "a symbolic link" if now[name] else "not a regular file"
            self.skipped[prefix + name] = what
            log.warning("%s: %s is %s: not followed, not copied", shown(self.root), shown(prefix + name), what)

    def _drop(self, rel: str, removed: list[str]) -> None:
        known = self.dirs.pop(rel, None)
        self.problems.pop(rel, None)
        if known is None:
            return
        prefix = f"{rel}/" if rel else ""
        removed.extend(prefix + name for name in known.files)
        for name in known.skipped:
            self.skipped.pop(prefix + name, None)
        for name in known.subdirs:
            self._drop(prefix + name, removed)


# --------------------------------------------------------------------------
# The experiment's storage


@dataclass
class _Storage:
    """The storage folder Create made for `experiment`, known by the id in its marker."""

    path: str
    experiment: str
    marker: str = ""  # '' for a transfer recorded without it (schema 1): the first marker seen is taken

    @classmethod
    def of(cls, experiment: Experiment, sources: Mapping[str, str]) -> _Storage:
        """The storage the destinations are in: the experiment's, else the folder holding them all."""
        dests = list(sources.values())
        if experiment.storage_directory:
            path = os.path.normpath(experiment.storage_directory)
        else:
            path = os.path.commonpath([os.path.dirname(dest) for dest in dests])
        outside = [dest for dest in dests if not _inside(dest, path)]
        if outside:
            raise InputError(f"transfer destination {outside[0]} is not inside the storage {path} of {experiment.name}")
        return cls(path, experiment.name)

    def open(self) -> int:
        """A descriptor of the storage folder, once its marker says it is the one; else StorageUnavailable."""
        where = shown(self.path)
        try:
            fd = open_folder(self.path)
        except FileNotFoundError:
            raise StorageUnavailable(
                f"the storage {where} of {self.experiment} is missing (deleted, or its disk not mounted?): "
                "nothing written, the files wait for it"
            ) from None
        except OSError as error:
            raise StorageUnavailable(f"cannot open the storage {where}: {_reason(error, self.path)}") from None
        try:
            marker = read_storage_marker(fd)
        except FileNotFoundError:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} has no {STORAGE_MARKER}: not the folder Create made for {self.experiment} "
                "(made again by hand, or a disk not mounted?); nothing written. If Create made it before this "
                "version, run Create again to mark it"
            ) from None
        except (OSError, ValueError) as error:
            os.close(fd)
            why = _reason(error) if isinstance(error, OSError) else str(error)
            raise StorageUnavailable(
                f"the marker of the storage {where} cannot be read ({why}): nothing written"
            ) from None
        if marker["experiment"] != self.experiment:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} belongs to experiment {marker['experiment']} (its {STORAGE_MARKER} says so), "
                f"not {self.experiment}: nothing written"
            )
        if self.marker and marker["id"] != self.marker:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} was made again since the transfer started (its {STORAGE_MARKER} changed): "
                "nothing written; DaqStop, then DaqStart to send every file into the new one"
            )
        self.marker = self.marker or marker["id"]
        return fd

    def open_dest(self, dest: str) -> int:
        """A descriptor of destination folder `dest`, reached from the checked storage; never made here."""
        fd = self.open()
        walked = self.path
        try:
            for name in os.path.relpath(dest, self.path).split(os.sep):
                walked = os.path.join(walked, name)
                child = _open_child(fd, name, walked)
                os.close(fd)
                fd = child
        except OSError as error:
            os.close(fd)
            if isinstance(error, FileNotFoundError):
                raise StorageUnavailable(
                    f"{shown(walked)} is missing from the storage of {self.experiment}: not made by the transfer "
                    "(Create makes it); nothing written"
                ) from None
            why = _reason(error, walked)
            raise StorageUnavailable(f"cannot open {shown(walked)}: {why}; nothing written") from None
        return fd

    def check(self, dests: Sequence[str]) -> None:
        """Raise StorageUnavailable unless the storage and every destination folder in it are there."""
        for dest in dests:
            os.close(self.open_dest(dest))


# --------------------------------------------------------------------------
# The engine


@dataclass(slots=True)
class _File:
    size: int
    mtime_ns: int
    state: str = PENDING
    stable_since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    audited: bool = False  # in its source's audit queue
    seen_at: float = -1.0  # the poll that last stat'ed it (no second stat in the same poll)


@dataclass
class _Source:
    root: str
    dest: str
    tree: Tree | None = None
    files: dict[str, _File] = field(default_factory=dict)
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)  # from the ledger, not seen yet
    pending: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    audit: deque[str] = field(default_factory=deque)
    error: str = ""


@dataclass(frozen=True)
class _Job:
    source: _Source
    rel: str
    size: int
    mtime_ns: int


class _Run:
    """One transfer (a start or a resume): the engine thread and its state."""

    AUDIT_PER_POLL = 500  # already-sent files re-stat'ed per poll
    CHUNK_FILES = 64  # files per worker task (one syncfs for them all)
    CHUNK_BYTES = 16 * 1024 * 1024  # a chunk's data; a larger file is a chunk of its own
    CHUNKS_PER_WORKER = 2  # chunks in flight per worker

    def __init__(
        self, owner: LocalTransfer, experiment: str, sources: Mapping[str, str], once: bool, storage: _Storage
    ):
        self.owner = owner
        self.experiment = experiment
        self.once = once
        self.storage = storage
        self.storage_error = ""  # the storage is not there as Create made it: nothing is copied meanwhile
        self.cleaned = False  # temporary files a killed run left under the destinations are removed
        self.sources = [_Source(root, dest) for root, dest in sources.items()]
        self.cancel = threading.Event()
        self.finished = False
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.ready: deque[_Job] = deque()
        self.in_flight = 0
        self.errors: dict[tuple[str, str], str] = {}
        self.done_files = 0
        self.done_bytes = 0
        self.copied_files = 0
        self.copied_bytes = 0
        self.last_file = ""
        self.ledger_error = ""
        self.engine_error = ""
        self.first_pass_done = False
        self.synced_dirs: set[str] = set()
        self.started = time.monotonic()
        self.rate_samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self.poll_seconds = 0.0
        self.thread = threading.Thread(target=self._main, name=f"transfer-{experiment}", daemon=True)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.finished

    def wake(self) -> None:
        self.results.put(None)

    # ---- main loop

    def _main(self) -> None:
        workers = ThreadPoolExecutor(max_workers=self.owner.workers, thread_name_prefix="transfer-copy")
        try:
            next_poll, prepared = 0.0, False
            while not self.cancel.is_set():
                try:
                    if not prepared:
                        self._prepare()
                        prepared = True
                    now = time.monotonic()
                    if now >= next_poll:
                        started = time.perf_counter()
                        self._poll(now)
                        self.poll_seconds = time.perf_counter() - started
                        next_poll = now + self.owner.poll_interval
                    self._submit(workers)
                    if self.owner.ledger.due():
                        self._commit()
                    if self.once and self._all_sent():
                        self._finish()
                        return
                    self.engine_error = ""
                    self._publish()
                    self._drain(max(0.0, next_poll - time.monotonic()))
                except Exception as error:
                    log.exception("transfer of %s: unexpected failure; continuing", self.experiment)
                    self.engine_error = f"transfer engine failed: {error}"
                    self._publish()
                    self.cancel.wait(self.owner.poll_interval)
        finally:
            workers.shutdown(wait=True, cancel_futures=True)
            self._drain(0.0)
            try:
                self._commit()
            except Exception:
                log.exception("transfer of %s: cannot write the ledger on exit", self.experiment)

    def _prepare(self) -> None:
        """Load what the ledger knows."""
        for source in self.sources:
            source.sent = self.owner.ledger.sent(source.root, source.dest)

    def _check_storage(self) -> None:
        """Is the storage the one Create made, with its destination folders? Once it is, remove the
        temporary files a killed run left there."""
        try:
            self.storage.check([source.dest for source in self.sources])
            if not self.cleaned:
                for source in self.sources:
                    fd = self.storage.open_dest(source.dest)
                    try:
                        removed = remove_part_files(fd)
                    finally:
                        os.close(fd)
                    if removed:
                        log.info("removed %s unfinished copies under %s", removed, source.dest)
                self.cleaned = True
        except StorageUnavailable as error:
            if str(error) != self.storage_error:
                log.error("transfer of %s: %s", self.experiment, error)
            self.storage_error = str(error)
            return
        if self.storage_error:
            log.info("transfer of %s: the storage %s is back", self.experiment, self.storage.path)
        self.storage_error = ""

    def _poll(self, now: float) -> None:
        wall = time.time()
        self._check_storage()
        for source in self.sources:
            if not self.once or not self.first_pass_done:
                self._scan(source, now, wall)
            self._check_pending(source, now)
            self._retry_failed(source, now)
            if not self.once:
                self._audit(source, now, wall)
        self.first_pass_done = True

    def _scan(self, source: _Source, now: float, wall: float) -> None:
        beneath = self.owner.source_top
        if source.tree is None:
            if not os.path.lexists(source.root):
                return  # not there yet: no error, it is picked up when it appears
            source.tree = Tree(source.root, beneath)
            log.info("transfer of %s: scanning %s", self.experiment, source.root)
        try:
            found, removed = source.tree.poll()
        except FileNotFoundError:
            source.error = f"source folder {shown(source.root)} vanished"
            source.tree = Tree(source.root, beneath)  # a full rescan when it is back
            return
        except SymlinkRefused as error:
            link = shown(error.filename)
            source.error = f"source folder {shown(source.root)} refused: {link} is a symbolic link, not followed"
            source.tree = Tree(source.root, beneath)
            return
        except OSError as error:
            source.error = f"cannot read source folder {shown(source.root)}: {error.strerror or error}"
            return
        except ValueError:  # recorded before dm.data_top_dir changed
            source.error = f"source folder {shown(source.root)} is not inside dm.data_top_dir {beneath}: not read"
            return
        source.error = next(iter(source.tree.problems.values()), "")
        for rel in removed:
            self._forget(source, rel)
        for rel, size, mtime_ns in found:
            self._observe(source, rel, size, mtime_ns, now, wall)

    def _observe(self, source: _Source, rel: str, size: int, mtime_ns: int, now: float, wall: float) -> None:
        """A file seen by the scan or the audit: new, changed, or as before."""
        file = source.files.get(rel)
        if file is None:
            if not rel.isprintable():
                self._warn_odd_name(source, rel)
            if source.sent.pop(rel, None) == (size, mtime_ns):
                sent = self._still_at_destination(source, rel)
            else:
                sent = self._at_destination(source, rel, size, mtime_ns)
            if sent:
                file = source.files[rel] = _File(size, mtime_ns, DONE)
                self.done_files += 1
                self.done_bytes += size
                self._audit_later(source, rel, file)
                return
            file = source.files[rel] = _File(size, mtime_ns)
        elif (file.size, file.mtime_ns) == (size, mtime_ns) or file.state == QUEUED:
            return  # a queued file is checked again by its copy
        else:
            self._leave_state(source, rel, file)
            file.size, file.mtime_ns = size, mtime_ns
        file.state = PENDING
        # An mtime already older than settle_time counts toward settling.
        file.stable_since = now - min(max(wall - mtime_ns / 1e9, 0.0), self.owner.settle_time)
        file.seen_at = now
        source.pending.add(rel)

    def _warn_odd_name(self, source: _Source, rel: str) -> None:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            log.warning(
                "transfer of %s: the name of %s is not UTF-8: sent under the same bytes (shown here as \\xNN)",
                self.experiment,
                shown(os.path.join(source.root, rel)),
            )

    def _still_at_destination(self, source: _Source, rel: str) -> bool:
        """A file the ledger lists as sent: whether its copy is still there (one stat, at its first sighting).

        A copy deleted behind the ledger's back (storage removed by hand, an
        experiment deleted and re-created without `forget`) is sent again,
        instead of being counted as sent while storage lacks it. While the
        storage itself is not there, the ledger is trusted.
        """
        if self.storage_error:
            return True
        try:
            os.stat(os.path.join(source.dest, rel))
        except (FileNotFoundError, NotADirectoryError):
            log.info(
                "transfer of %s: %s was sent but is missing from %s; sending it again",
                self.experiment,
                shown(rel),
                source.dest,
            )
            return False
        except OSError:
            pass  # cannot tell: trust the ledger
        return True

    def _at_destination(self, source: _Source, rel: str, size: int, mtime_ns: int) -> bool:
        """The destination already holds this version (sent before its ledger row was committed)."""
        try:
            st = os.stat(os.path.join(source.dest, rel))
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
        # Its data was made durable before its rename (copy_files); the rename may not be
        # yet (a kill -9 before the ledger commit): the commit makes it durable first.
        self.synced_dirs.add(os.path.dirname(os.path.join(source.dest, rel)))
        self.owner.ledger.add(source.root, rel, size, mtime_ns, source.dest)
        return True

    def _leave_state(self, source: _Source, rel: str, file: _File) -> None:
        if file.state == DONE:
            self.done_files -= 1
            self.done_bytes -= file.size
        source.pending.discard(rel)
        source.failed.discard(rel)
        self.errors.pop((source.root, rel), None)

    def _forget(self, source: _Source, rel: str) -> None:
        file = source.files.pop(rel, None)
        if file is not None:
            self._leave_state(source, rel, file)

    def _check_pending(self, source: _Source, now: float) -> None:
        for rel in list(source.pending):
            file = source.files[rel]
            if file.seen_at == now:  # stat'ed by this poll's scan: settled if settle_time allows
                if now - file.stable_since >= self.owner.settle_time:
                    source.pending.discard(rel)
                    self._queue(source, rel, file)
                continue
            try:
                st = os.stat(os.path.join(source.root, rel), follow_symlinks=False)
            except FileNotFoundError:
                self._forget(source, rel)
                continue
            except OSError as error:
                self._fail(source, rel, file, f"cannot read {shown(os.path.join(source.root, rel))}: {error.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._forget(source, rel)  # a symlink or special file now: the scan says so
                continue
            if (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
                file.size, file.mtime_ns, file.stable_since = st.st_size, st.st_mtime_ns, now
            elif now - file.stable_since >= self.owner.settle_time:
                source.pending.discard(rel)
                self._queue(source, rel, file)

    def _retry_failed(self, source: _Source, now: float) -> None:
        for rel in [rel for rel in source.failed if source.files[rel].retry_at <= now]:
            source.failed.discard(rel)
            self._queue(source, rel, source.files[rel])

    def _audit(self, source: _Source, now: float, wall: float) -> None:
        """Re-stat a bounded number of sent files: catches files rewritten in place."""
        for _ in range(min(self.AUDIT_PER_POLL, len(source.audit))):
            rel = source.audit.popleft()
            file = source.files.get(rel)
            if file is None or file.state != DONE:
                if file is not None:
                    file.audited = False
                continue
            source.audit.append(rel)
            try:
                st = os.stat(os.path.join(source.root, rel), follow_symlinks=False)
            except OSError:
                continue  # a removal shows in the scan
            self._observe(source, rel, st.st_size, st.st_mtime_ns, now, wall)

    def _audit_later(self, source: _Source, rel: str, file: _File) -> None:
        if not self.once and not file.audited:
            file.audited = True
            source.audit.append(rel)

    def _queue(self, source: _Source, rel: str, file: _File) -> None:
        file.state = QUEUED
        self.ready.append(_Job(source, rel, file.size, file.mtime_ns))

    def _submit(self, workers: ThreadPoolExecutor) -> None:
        """Hand ready files to the workers in chunks: one task, one flush and one result per chunk.

        A chunk takes up to CHUNK_FILES files of one source and CHUNK_BYTES
        (a larger file goes alone, with its own fsync), and no more than a fair
        share of what is ready, so that a few files still spread over the workers.
        """
        if self.storage_error:
            return  # the files wait, queued, for the storage
        limit = self.owner.workers * self.CHUNKS_PER_WORKER
        while self.ready and self.in_flight < limit and not self.cancel.is_set():
            share = min(self.CHUNK_FILES, -(-len(self.ready) // self.owner.workers))
            job = self.ready.popleft()
            chunk, size = [job], job.size
            while (
                self.ready
                and len(chunk) < share
                and self.ready[0].source is job.source
                and size + self.ready[0].size <= self.CHUNK_BYTES
            ):
                chunk.append(self.ready.popleft())
                size += chunk[-1].size
            workers.submit(self._copy, chunk)
            self.in_flight += 1

    def _copy(self, jobs: list[_Job]) -> None:
        """In a worker thread: copy a chunk of files (all of one source), hand the outcomes to the engine thread."""
        source = jobs[0].source
        try:
            outcomes = copy_files(
                source.root,
                source.dest,
                [(job.rel, (job.size, job.mtime_ns)) for job in jobs],
                checksum=self.owner.checksum,
                cancel=self.cancel,
                open_source=functools.partial(open_folder, source.root, self.owner.source_top),
                open_dest=functools.partial(self.storage.open_dest, source.dest),
            )
        except Exception as error:
            log.exception("copying to %s failed unexpectedly", source.dest)
            outcomes = [
                (FAILED, f"cannot copy {shown(os.path.join(source.root, job.rel))} to {source.dest}: {error}")
                for job in jobs
            ]
        self.results.put((jobs, outcomes))

    def _drain(self, timeout: float) -> None:
        """Take copy outcomes, waiting up to `timeout` for the first."""
        try:
            result = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
            while True:
                if result is not None:
                    self.in_flight -= 1
                    for job, (outcome, reason) in zip(*result, strict=True):
                        self._settle(job, outcome, reason)
                result = self.results.get_nowait()
        except queue.Empty:
            pass

    def _settle(self, job: _Job, outcome: str, reason: str) -> None:
        source, rel = job.source, job.rel
        file = source.files.get(rel)
        if outcome == COPIED:
            self.copied_files += 1
            self.copied_bytes += job.size
            self.last_file = os.path.join(source.root, rel)
            self.owner.ledger.add(source.root, rel, job.size, job.mtime_ns, source.dest)
            self.synced_dirs.add(os.path.dirname(os.path.join(source.dest, rel)))
        if file is None or file.state != QUEUED:
            return  # removed (or seen again) meanwhile
        if outcome == COPIED and (file.size, file.mtime_ns) == (job.size, job.mtime_ns):
            file.state, file.attempts = DONE, 0
            self.errors.pop((source.root, rel), None)
            self.done_files += 1
            self.done_bytes += job.size
            self._audit_later(source, rel, file)
        elif outcome == VANISHED:
            self._forget(source, rel)
        elif outcome == FAILED:
            self._fail(source, rel, file, reason)
        else:  # changed, cancelled, no storage, or copied a version that has changed since
            if outcome == NO_STORAGE:
                self.storage_error = reason
            file.state, file.stable_since = PENDING, time.monotonic()
            source.pending.add(rel)

    def _fail(self, source: _Source, rel: str, file: _File, reason: str) -> None:
        """Keep the file for a retry with exponential backoff; the state shows Error meanwhile."""
        source.pending.discard(rel)
        file.state = FAILED
        file.attempts += 1
        delay = min(self.owner.retry_max, self.owner.retry_initial * 2 ** (file.attempts - 1))
        file.retry_at = time.monotonic() + delay
        source.failed.add(rel)
        key = (source.root, rel)
        self.errors.pop(key, None)
        self.errors[key] = reason
        log.warning("transfer of %s: %s (attempt %s, retry in %.1f s)", self.experiment, reason, file.attempts, delay)

    def _commit(self) -> None:
        """Make the renames durable (fsync their folders), then commit the ledger batch.

        The copies' data was made durable before their rename (copy_files), so
        once their folders are fsync'ed every row of the batch names a file that
        survives a power failure. A power failure before this point may undo a
        rename: that file is then absent (its temporary file is removed at
        resume) and sent again; or the rename survived and the file is whole.
        """
        for folder in self.synced_dirs:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                log.warning("cannot fsync folder %s", folder, exc_info=True)
        self.synced_dirs.clear()
        try:
            self.owner.ledger.commit()
            self.ledger_error = ""
        except sqlite3.Error as error:
            log.exception("cannot write the transfer ledger %s", self.owner.ledger.path)
            self.ledger_error = f"cannot write the transfer ledger {self.owner.ledger.path}: {error}"

    def _all_sent(self) -> bool:
        return (
            self.first_pass_done
            and not self.ready
            and not self.in_flight
            and not any(source.pending or source.failed for source in self.sources)
        )

    def _finish(self) -> None:
        """An upload has sent everything: record it, clear the definition, show the summary."""
        self._commit()
        self.owner.ledger.clear_running()
        elapsed = time.monotonic() - self.started
        summary = (
            f"upload of {self.experiment} finished: {self.copied_files} files, "
            f"{self.copied_bytes / 1e6:.1f} MB in {elapsed:.1f} s"
        )
        already = self.done_files - self.copied_files
        if already > 0:
            summary += f" ({already} already there)"
        summary += self._not_followed()
        log.info("%s", summary)
        self.owner._publish(self, self._snapshot("Stopped", summary, rate=0.0))
        self.finished = True

    # ---- progress

    def _publish(self) -> None:
        problems = [self.storage_error] if self.storage_error else []
        problems += [s.error for s in self.sources if s.error]
        problems += [error for error in (self.engine_error, self.ledger_error) if error]
        problems += list(self.errors.values())[::-1]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            self.owner._publish(self, self._snapshot("Error", problems[0] + more))
        else:
            self.owner._publish(self, self._snapshot("Running", ""))

    def _snapshot(self, state: str, message: str, rate: float | None = None) -> TransferProgress:
        if rate is None:
            rate = self._rate()
        return TransferProgress(
            state=state,
            files_done=self.done_files,
            files_total=sum(len(source.files) for source in self.sources),
            bytes_done=float(self.done_bytes),
            rate_mb_s=rate,
            last_file=shown(self.last_file),
            message=shown(message),
        )

    def _rate(self, window: float = 5.0) -> float:
        """MB/s copied over the last `window` seconds."""
        now = time.monotonic()
        if now - self.rate_samples[-1][0] >= 0.25:
            self.rate_samples.append((now, self.copied_bytes))
        while len(self.rate_samples) > 2 and now - self.rate_samples[1][0] >= window:
            self.rate_samples.popleft()
        since, copied = self.rate_samples[0]
        elapsed = now - since
        return (self.copied_bytes - copied) / elapsed / 1e6 if elapsed > 0 else 0.0

    def summary(self) -> str:
        return f"{self.copied_files} files, {self.copied_bytes / 1e6:.1f} MB sent{self._not_followed()}"

    def _not_followed(self) -> str:
        """'; 2 not followed (symbolic links, special files): raw/scan1/link, ...' or ''."""
        names = [
            os.path.join(os.path.basename(source.root), rel)
            for source in self.sources
            if source.tree is not None
            for rel in source.tree.skipped
        ]
        if not names:
            return ""
        listed = ", ".join(shown(name) for name in names[:3]) + (", ..." if len(names) > 3 else "")
        return f"; {len(names)} not followed (symbolic links, special files): {listed}"


class LocalTransfer:
    """`ports.Transfer` by copying on this host, with a resumable SQLite ledger.

    A second `start` for the same experiment, sources and mode while it runs
    returns a sentence saying so (DaqStart is idempotent); a start for another
    experiment or other sources raises `InputError`: nothing changed. So does a
    source folder that is a symbolic link or outside `source_top`
    (dm.data_top_dir); a storage that is not the one Create made is a DMError.
    """

    STOP_TIMEOUT = 10.0  # seconds stop() waits for copies to abandon their temporary files

    def __init__(
        self,
        ledger_path: Path,
        settle_time: float = 2.0,
        checksum: bool = False,
        workers: int = 4,
        poll_interval: float = 0.5,
        source_top: Path | str | None = None,
    ):
        self.ledger_path = Path(ledger_path)
        # Source folders must be inside it, reached without a symlink (None: each one's parent folder).
        self.source_top = os.path.normpath(os.path.abspath(source_top)) if source_top else None
        self.settle_time = settle_time
        self.checksum = checksum
        self.workers = max(1, workers)
        self.poll_interval = poll_interval
        self.retry_initial = 1.0  # first retry delay of a failed file, doubled up to retry_max
        self.retry_max = 60.0
        self._ledger: Ledger | None = None
        self._control = threading.Lock()  # start / stop / resume, one at a time
        self._progress_lock = threading.Lock()
        self._progress = TransferProgress()
        self._run: _Run | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use (nothing touches the disk at construction).

        One that cannot be read is kept aside and a fresh one started, saying so (see the module's docstring).
        """
        if self._ledger is None:
            with self._ledger_errors():
                try:
                    self._ledger = Ledger(self.ledger_path)
                except LedgerUnreadable as error:
                    self._ledger = self._start_afresh(str(error))
        return self._ledger

    def _start_afresh(self, reason: str) -> Ledger:
        """Keep the unreadable ledger aside (with its WAL), open a fresh one, show an Error saying so."""
        where = self.ledger_path
        try:
            aside = keep_aside(where, LEDGER_COMPANIONS)
        except OSError as error:
            raise DMError(
                f"the transfer ledger {where} cannot be read ({reason}) nor kept aside ({error.strerror}): "
                "move it away by hand"
            ) from None
        try:
            ledger = Ledger(where)
        except LedgerUnreadable as error:  # a new file that cannot be read: the disk, not the data
            raise DMError(f"cannot open the transfer ledger {where}: {error}") from None
        notice = (
            f"the transfer ledger {where} could not be read ({reason}): kept it as {aside.name}, started a fresh "
            "one; a transfer it recorded as running is not resumed (DaqStart it again); files already in "
            "storage with the same size and time are not copied again"
        )
        log.error("%s", notice)
        with self._progress_lock:
            self._progress = TransferProgress(state="Error", message=notice)
        return ledger

    @contextlib.contextmanager
    def _ledger_errors(self) -> Iterator[None]:
        """Ledger failures as DMError, with a message fit for Status."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            raise DMError(f"cannot use the transfer ledger {self.ledger_path}: {error}") from error

    @property
    def poll_seconds(self) -> float:
        """Duration of the running transfer's last poll (for benchmarks and diagnostics)."""
        run = self._run
        return run.poll_seconds if run is not None else 0.0

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start sending each source folder into its destination; return a sentence for Status."""
        sources = _check_sources(sources)
        self._check_source_folders(sources)
        storage = _Storage.of(experiment, sources)
        with self._control:
            run = self._run
            if run is not None and run.alive:
                same = (
                    run.experiment == experiment.name
                    and {s.root: s.dest for s in run.sources} == sources
                    and run.once == once
                )
                if same:
                    return f"the {'upload' if once else 'transfer'} of {experiment.name} is already running"
                raise InputError(
                    f"a {'upload' if run.once else 'transfer'} of {run.experiment} is running; "
                    f"stop it (DaqStop) before starting one for {experiment.name}"
                )
            try:
                storage.check(list(sources.values()))
            except StorageUnavailable as error:
                raise DMError(str(error)) from None
            with self._ledger_errors():
                self.ledger.set_running(experiment.name, sources, once, storage.path, storage.marker)
            return self._launch(experiment.name, sources, once, storage, "uploading" if once else "transferring")

    def _check_source_folders(self, sources: Mapping[str, str]) -> None:
        """Refuse a source folder outside `source_top` or reached through a symlink; one not there yet is fine."""
        for root in sources:
            if self.source_top is not None and not _inside(root, self.source_top):
                raise InputError(
                    f"source folder {shown(root)} is not inside dm.data_top_dir {self.source_top}: refused, "
                    "nothing transferred"
                )
            try:
                os.close(open_folder(root, self.source_top))
            except FileNotFoundError:
                continue  # a transfer waits for it, an upload skips it
            except SymlinkRefused as error:
                link = "" if error.filename == root else f" ({shown(error.filename)} is one)"
                raise InputError(
                    f"source folder {shown(root)} is reached through a symbolic link{link}: refused, nothing "
                    "transferred (sources must be real folders under dm.data_top_dir)"
                ) from None
            except OSError as error:
                raise InputError(f"source folder {shown(root)}: {_reason(error, root)}; nothing transferred") from None

    def resume(self) -> str | None:
        """Restart the transfer that was running when the IOC stopped, if any."""
        with self._control:
            if self._run is not None and self._run.alive:
                return None
            with self._ledger_errors():
                definition = self.ledger.running()
            if definition is None:
                return None
            name, sources, once = definition.experiment, definition.sources, definition.once
            # Not checked here: a storage or source folder that is not right shows as an Error of the run.
            if definition.storage:
                storage = _Storage(definition.storage, name, definition.marker)
            else:  # recorded by a version without storage markers
                storage = _Storage.of(Experiment(name=name), sources)
            verb = "resumed uploading" if once else "resumed transferring"
            return self._launch(name, sources, once, storage, verb)

    def _launch(self, name: str, sources: dict[str, str], once: bool, storage: _Storage, verb: str) -> str:
        run = _Run(self, name, sources, once, storage)
        self._run = run
        self._publish(run, run._snapshot("Running", "", rate=0.0))
        run.thread.start()
        present = [root for root in sources if os.path.isdir(root)]
        missing = [root for root in sources if root not in present]
        sentence = f"{verb} {name}: " + ", ".join(f"{root} -> {sources[root]}" for root in present or sources)
        if missing:
            if once:
                sentence += (
                    "; "
                    + ", ".join(missing)
                    + (" does not exist, skipped" if len(missing) == 1 else " do not exist, skipped")
                )
            else:
                sentence += "; waiting for " + " and ".join(missing) + " to appear"
        log.info("%s", sentence)
        return sentence

    def stop(self) -> str:
        """Stop the transfer: copies under way are abandoned (no temporary file stays)."""
        with self._control:
            run = self._run
            if run is None or not run.alive:
                with self._ledger_errors():
                    self.ledger.clear_running()
                with self._progress_lock:
                    if self._progress.state == "Error":  # e.g. a ledger kept aside: seen, cleared
                        self._progress = dataclasses.replace(self._progress, state="Stopped", message="")
                return "no transfer is running"
            run.cancel.set()
            run.wake()
            run.thread.join(self.STOP_TIMEOUT)
            with self._ledger_errors():
                self.ledger.clear_running()
            kind = "upload" if run.once else "transfer"
            sentence = f"{kind} of {run.experiment} stopped: {run.summary()}"
            if run.thread.is_alive():
                sentence += "; a copy is still finishing"
            self._publish(run, run._snapshot("Stopped", sentence, rate=0.0), final=True)
            log.info("%s", sentence)
            return sentence

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget the files sent from these sources to their destinations (that storage was deleted).

        Their ledger rows go in one transaction, so that a new start (a
        re-created experiment) sends every file again. Refused with InputError
        while a transfer of one of these sources runs: nothing forgotten.
        """
        sources = _normalized(sources)
        if not sources:
            return
        with self._control:
            run = self._run
            if run is not None and run.alive:
                busy = [source.root for source in run.sources if source.root in sources]
                if busy:
                    raise InputError(
                        f"the {'upload' if run.once else 'transfer'} of {run.experiment} from {', '.join(busy)} "
                        "is running (or still finishing): stop it (DaqStop) first; its sent files not forgotten"
                    )
            with self._ledger_errors():
                removed = self.ledger.forget(sources)
        log.info("transfer ledger: forgot %s files sent from %s", removed, ", ".join(sources))

    def progress(self) -> TransferProgress:
        """The latest snapshot; cheap and thread-safe."""
        with self._progress_lock:
            return self._progress

    def _publish(self, run: _Run, progress: TransferProgress, final: bool = False) -> None:
        """Show `run`'s snapshot, unless it is a late one from a run that was stopped or replaced."""
        with self._progress_lock:
            if run is self._run and (final or not run.cancel.is_set()):
                self._progress = progress

    def close(self) -> None:
        """Stop any transfer (keeping its definition for resume) and close the ledger."""
        run = self._run
        if run is not None and run.alive:
            run.cancel.set()
            run.wake()
            run.thread.join(self.STOP_TIMEOUT)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _check_sources(sources: Mapping[str, str]) -> dict[str, str]:
    """Absolute, normalized {source: destination}; refuse a destination inside its source."""
    if not sources:
        raise InputError("no source folder to transfer")
    checked = {}
    for root, dest in _normalized(sources).items():
        if not os.path.isabs(root) or not os.path.isabs(dest):
            raise InputError(f"transfer folders must be absolute paths: {root} -> {dest}")
        if os.path.commonpath([root, dest]) in (root, dest):
            raise InputError(f"cannot transfer {root} into {dest}: one folder is inside the other")
        checked[root] = dest
    return checked


def _normalized(sources: Mapping[str, str]) -> dict[str, str]:
    """{source: destination} with both paths normalized, as the ledger records them."""
    return {os.path.normpath(os.fspath(root)): os.path.normpath(os.fspath(dest)) for root, dest in sources.items()}
