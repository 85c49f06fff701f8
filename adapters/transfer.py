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
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
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

from ..ioc.model import DMError, Experiment, InputError
from ..ioc.ports import TransferProgress

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COPY_CHUNK = 64 * 1024 * 1024  # bytes per copy_file_range call; a stop is seen between chunks
BUFFER_SIZE = 4 * 1024 * 1024  # userspace copy and checksum buffer
PART_NAME = re.compile(r"^\..*\.part-[0-9a-f]{8}$", re.DOTALL)
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}

# File states in the engine
PENDING, QUEUED, DONE, FAILED = "pending", "queued", "done", "failed"
# Copy outcomes
COPIED, CHANGED, VANISHED, CANCELLED = "copied", "changed", "vanished", "cancelled"


# --------------------------------------------------------------------------
# Ledger


class Ledger:
    """SQLite record of sent files and of the running transfer's definition.

    Rows are buffered and committed in batches (`BATCH_FILES` rows or
    `BATCH_SECONDS`); a lost batch costs nothing since a destination file with
    the source's size and mtime counts as sent (one stat each at resume), so
    the batches are large: each costs a commit and folder fsyncs. Thread-safe.
    """

    BATCH_FILES = 1000
    BATCH_SECONDS = 0.5

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, int, int, str, float]] = []
        self._last_commit = time.monotonic()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DMError(f"transfer ledger {self.path} has schema {version}, newer than this IOC's")
        if version < 1:
            with self._transaction():
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS files (root TEXT NOT NULL, relpath TEXT NOT NULL,"
                    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, dest TEXT NOT NULL,"
                    " sent_at REAL NOT NULL, PRIMARY KEY (root, relpath)) WITHOUT ROWID"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS running (id INTEGER PRIMARY KEY CHECK (id = 1),"
                    " experiment TEXT NOT NULL, sources TEXT NOT NULL, once INTEGER NOT NULL,"
                    " started_at REAL NOT NULL)"
                )
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

    def running(self) -> tuple[str, dict[str, str], bool] | None:
        """The running transfer (experiment, sources, once), or None."""
        with self._lock:
            row = self._db.execute("SELECT experiment, sources, once FROM running WHERE id = 1").fetchone()
        return None if row is None else (row[0], json.loads(row[1]), bool(row[2]))

    def set_running(self, experiment: str, sources: Mapping[str, str], once: bool) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO running (id, experiment, sources, once, started_at) VALUES (1, ?, ?, ?, ?)",
                (experiment, json.dumps(dict(sources)), int(once), time.time()),
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
        return {relpath: (size, mtime_ns) for relpath, size, mtime_ns in rows}

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
                    rows,
                )
            self._rows = []
            return len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------
# Copying one file


class _Cancelled(Exception):
    pass


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
    """Copy one file; see `copy_files`. Returns its outcome; a failure raises OSError."""
    outcome, reason = copy_files([(src, dst, expected)], checksum=checksum, cancel=cancel)[0]
    if outcome == FAILED:
        raise OSError(errno.EIO, reason)
    return outcome


def copy_files(
    items: Sequence[tuple[str, str, tuple[int, int]]],
    *,
    checksum: bool = False,
    cancel: threading.Event | None = None,
) -> list[tuple[str, str]]:
    """Copy each (src, dst, expected (size, mtime_ns)) through a durable, verified temporary file and a rename.

    Returns an (outcome, reason) per item: COPIED, CHANGED (the source is not
    `expected` or changed during the copy: nothing written), VANISHED,
    CANCELLED, or FAILED with a sentence; no temporary file is left behind.

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
    written: list[tuple[int, str]] = []  # (index, temporary file) after phase 1
    per_file = len(items) == 1 or _SYNCFS is None
    sync_fds: dict[int, int] = {}  # st_dev -> fd for syncfs
    try:
        for index, (src, dst, expected) in enumerate(items):
            if cancel is not None and cancel.is_set():
                return results
            try:
                outcome, tmp = _write_aside(src, dst, expected, checksum, cancel, None if per_file else sync_fds)
            except _Cancelled:
                return results
            except OSError as error:
                results[index] = _failure(error, src, dst)
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
                src, dst, _expected = items[index]
                results[index] = (FAILED, f"cannot copy {src} to {dst}: cannot flush the copies: {_reason(error)}")
            return results
        for position, (index, tmp) in enumerate(written):
            src, dst, expected = items[index]
            try:
                after = os.stat(src)
                if (after.st_size, after.st_mtime_ns) != expected:
                    results[index] = (CHANGED, "")
                    continue
                os.replace(tmp, dst)
                written[position] = (index, "")
                results[index] = (COPIED, "")
            except OSError as error:
                results[index] = _failure(error, src, dst)
        return results
    finally:
        for fd in sync_fds.values():
            os.close(fd)
        for _index, tmp in written:
            if tmp:
                _unlink_quietly(tmp)


def _failure(error: OSError, src: str, dst: str) -> tuple[str, str]:
    if isinstance(error, FileNotFoundError) and error.filename == src and not os.path.exists(src):
        return VANISHED, ""
    return FAILED, f"cannot copy {src} to {dst}: {_reason(error, src, dst)}"


def _write_aside(
    src: str,
    dst: str,
    expected: tuple[int, int],
    checksum: bool,
    cancel: threading.Event | None,
    sync_fds: dict[int, int] | None,
) -> tuple[str, str]:
    """Phase 1 of `copy_files`: (COPIED, temporary file), or (CHANGED or VANISHED, "").

    With `sync_fds` None the copy is fsync'ed here; otherwise its filesystem's
    fd is added to `sync_fds` for one syncfs later.
    """
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return VANISHED, ""
    try:
        before = os.fstat(src_fd)
        if (before.st_size, before.st_mtime_ns) != expected:
            return CHANGED, ""
        folder, name = os.path.split(dst)
        tmp = os.path.join(folder, part_name(name))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            os.makedirs(folder, exist_ok=True)  # only when missing: one syscall less per file
            fd = os.open(tmp, flags, 0o600)
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
            if source_digest is not None and _digest(tmp) != source_digest:
                raise OSError(errno.EIO, "checksum of the copy differs from the source")
            done, tmp = tmp, ""
            return COPIED, done
        finally:
            if tmp:
                _unlink_quietly(tmp)
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
        reason += f" ({os.fsdecode(error.filename)})"
    return reason


def _digest(path: str) -> bytes:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, hashlib.blake2b).digest()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("cannot remove temporary file %s", path, exc_info=True)


def remove_part_files(folder: str) -> int:
    """Remove leftover temporary copies under `folder` (after a kill); return how many."""
    removed = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if PART_NAME.match(name):
                _unlink_quietly(os.path.join(dirpath, name))
                removed += 1
    return removed


# --------------------------------------------------------------------------
# Scanning a source folder


@dataclass(slots=True)
class _Dir:
    mtime_ns: int = -1
    files: dict[str, int] = field(default_factory=dict)  # name -> inode
    subdirs: set[str] = field(default_factory=set)
    recheck_until: float = 0.0


class Tree:
    """Incremental view of one source folder: what appeared or disappeared since the last poll.

    Only directories whose mtime changed (or changed within `RECHECK_SECONDS`,
    against coarse timestamps) are listed again; only new names, and names
    whose inode changed (a file replaced by a rename), are stat'ed.
    """

    RECHECK_SECONDS = 2.0

    def __init__(self, root: str):
        self.root = root
        self.dirs: dict[str, _Dir] = {}
        self.problems: dict[str, str] = {}  # folders that cannot be read: relpath -> why

    def poll(self) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(new files as (relpath, size, mtime_ns), removed relpaths); FileNotFoundError if the root went."""
        found: list[tuple[str, int, int]] = []
        removed: list[str] = []
        now = time.monotonic()
        if not self.dirs:
            self._list("", os.stat(self.root), now, found, removed)
            return found, removed
        for rel in list(self.dirs):
            known = self.dirs.get(rel)
            if known is None:
                continue  # dropped with its parent during this poll
            try:
                st = os.stat(self._path(rel))
            except FileNotFoundError:
                if not rel:
                    raise
                self._drop(rel, removed)
                continue
            except NotADirectoryError:
                self._drop(rel, removed)
                continue
            if st.st_mtime_ns != known.mtime_ns or now < known.recheck_until:
                self._list(rel, st, now, found, removed)
        return found, removed

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _list(
        self, rel: str, st: os.stat_result, now: float, found: list[tuple[str, int, int]], removed: list[str]
    ) -> None:
        known = self.dirs.setdefault(rel, _Dir())
        if st.st_mtime_ns != known.mtime_ns:
            known.recheck_until = now + self.RECHECK_SECONDS
        known.mtime_ns = st.st_mtime_ns
        files: dict[str, int] = {}
        subdirs: set[str] = set()
        try:
            entries = list(os.scandir(self._path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            if not rel:
                raise FileNotFoundError(errno.ENOENT, "source folder vanished", self.root) from None
            self._drop(rel, removed)
            return
        except OSError as error:
            self.problems[rel] = f"cannot read source folder {self._path(rel)}: {error.strerror or error}"
            known.mtime_ns = -1  # listed again at the next poll
            return
        self.problems.pop(rel, None)
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.add(entry.name)
                elif entry.is_file(follow_symlinks=False) and not PART_NAME.match(entry.name):
                    files[entry.name] = entry.inode()
            except OSError:
                continue
        prefix = f"{rel}/" if rel else ""
        for name, inode in list(files.items()):
            if known.files.get(name) == inode:
                continue
            try:
                entry_stat = os.stat(os.path.join(self._path(rel), name), follow_symlinks=False)
            except FileNotFoundError:
                del files[name]
                continue
            found.append((prefix + name, entry_stat.st_size, entry_stat.st_mtime_ns))
        removed.extend(prefix + name for name in known.files.keys() - files.keys())
        for name in known.subdirs - subdirs:
            self._drop(prefix + name, removed)
        known.files, new_subdirs, known.subdirs = files, subdirs - known.subdirs, subdirs
        for name in new_subdirs:
            try:
                child_stat = os.stat(os.path.join(self._path(rel), name))
            except OSError:
                known.subdirs.discard(name)
                continue
            self._list(prefix + name, child_stat, now, found, removed)

    def _drop(self, rel: str, removed: list[str]) -> None:
        known = self.dirs.pop(rel, None)
        self.problems.pop(rel, None)
        if known is None:
            return
        prefix = f"{rel}/" if rel else ""
        removed.extend(prefix + name for name in known.files)
        for name in known.subdirs:
            self._drop(prefix + name, removed)


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

    def __init__(self, owner: LocalTransfer, experiment: str, sources: Mapping[str, str], once: bool):
        self.owner = owner
        self.experiment = experiment
        self.once = once
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
        """Load what the ledger knows and remove temporary files a killed run left."""
        for source in self.sources:
            source.sent = self.owner.ledger.sent(source.root, source.dest)
            if os.path.isdir(source.dest):
                removed = remove_part_files(source.dest)
                if removed:
                    log.info("removed %s unfinished copies under %s", removed, source.dest)

    def _poll(self, now: float) -> None:
        wall = time.time()
        for source in self.sources:
            if not self.once or not self.first_pass_done:
                self._scan(source, now, wall)
            self._check_pending(source, now)
            self._retry_failed(source, now)
            if not self.once:
                self._audit(source, now, wall)
        self.first_pass_done = True

    def _scan(self, source: _Source, now: float, wall: float) -> None:
        if source.tree is None:
            if not os.path.isdir(source.root):
                return  # not there yet: no error, it is picked up when it appears
            source.tree = Tree(source.root)
            log.info("transfer of %s: scanning %s", self.experiment, source.root)
        try:
            found, removed = source.tree.poll()
        except FileNotFoundError:
            source.error = f"source folder {source.root} vanished"
            source.tree = Tree(source.root)  # a full rescan when it is back
            return
        except OSError as error:
            source.error = f"cannot read source folder {source.root}: {error.strerror or error}"
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

    def _still_at_destination(self, source: _Source, rel: str) -> bool:
        """A file the ledger lists as sent: whether its copy is still there (one stat, at its first sighting).

        A copy deleted behind the ledger's back (storage removed by hand, an
        experiment deleted and re-created without `forget`) is sent again,
        instead of being counted as sent while storage lacks it.
        """
        try:
            os.stat(os.path.join(source.dest, rel))
        except (FileNotFoundError, NotADirectoryError):
            log.info(
                "transfer of %s: %s was sent but is missing from %s; sending it again",
                self.experiment,
                rel,
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
                self._fail(source, rel, file, f"cannot read {os.path.join(source.root, rel)}: {error.strerror}")
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
        """In a worker thread: copy a chunk of files, hand the outcomes to the engine thread."""
        items = [
            (os.path.join(job.source.root, job.rel), os.path.join(job.source.dest, job.rel), (job.size, job.mtime_ns))
            for job in jobs
        ]
        try:
            outcomes = copy_files(items, checksum=self.owner.checksum, cancel=self.cancel)
        except Exception as error:
            log.exception("copying to %s failed unexpectedly", jobs[0].source.dest)
            outcomes = [(FAILED, f"cannot copy {src} to {dst}: {error}") for src, dst, _expected in items]
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
        else:  # changed, cancelled, or copied a version that has changed since
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
        log.info("%s", summary)
        self.owner._publish(self, self._snapshot("Stopped", summary, rate=0.0))
        self.finished = True

    # ---- progress

    def _publish(self) -> None:
        problems = [s.error for s in self.sources if s.error]
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
            last_file=self.last_file,
            message=message,
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
        return f"{self.copied_files} files, {self.copied_bytes / 1e6:.1f} MB sent"


class LocalTransfer:
    """`ports.Transfer` by copying on this host, with a resumable SQLite ledger.

    A second `start` for the same experiment, sources and mode while it runs
    returns a sentence saying so (DaqStart is idempotent); a start for another
    experiment or other sources raises `InputError`: nothing changed.
    """

    STOP_TIMEOUT = 10.0  # seconds stop() waits for copies to abandon their temporary files

    def __init__(
        self,
        ledger_path: Path,
        settle_time: float = 2.0,
        checksum: bool = False,
        workers: int = 4,
        poll_interval: float = 0.5,
    ):
        self.ledger_path = Path(ledger_path)
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
        """The ledger, opened on first use (nothing touches the disk at construction)."""
        if self._ledger is None:
            with self._ledger_errors():
                self._ledger = Ledger(self.ledger_path)
        return self._ledger

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
            with self._ledger_errors():
                self.ledger.set_running(experiment.name, sources, once)
            return self._launch(experiment.name, sources, once, "uploading" if once else "transferring")

    def resume(self) -> str | None:
        """Restart the transfer that was running when the IOC stopped, if any."""
        with self._control:
            if self._run is not None and self._run.alive:
                return None
            with self._ledger_errors():
                definition = self.ledger.running()
            if definition is None:
                return None
            name, sources, once = definition
            return self._launch(name, sources, once, "resumed uploading" if once else "resumed transferring")

    def _launch(self, name: str, sources: dict[str, str], once: bool, verb: str) -> str:
        run = _Run(self, name, sources, once)
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
