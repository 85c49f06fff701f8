"""The transfer ledger: what was sent, and the running transfer, so that a restart resumes without resending."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from ...ioc.domain.errors import DiskFull, DMError
from ...ioc.statefiles import disk_full, private_file, write_transaction

SCHEMA_VERSION = 4
SQLITE_HEADER = b"SQLite format 3\x00"
LEDGER_COMPANIONS = ("-wal", "-shm")  # files beside the ledger that hold part of it
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class LedgerUnreadable(Exception):
    """The ledger file is there but cannot be read as a ledger (garbage, truncated, corrupt pages)."""


class LedgerFull(DiskFull, sqlite3.OperationalError):
    """No space left in state_dir for the ledger: a DiskFull for the use cases, and still an sqlite3 error
    for the copy loop, which keeps its buffered rows and tries again at the next batch."""


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
    Relative paths are stored as their bytes (a name need not be UTF-8); a file's checksum is the one its
    copy was verified against (dm.checksum), '' when none.
    Each (root, destination) pair has a generation (0 until forgotten); a file's row counts only while it
    carries its pair's: `forget` is one row, and `commit` removes the stale rows a chunk at a time.
    Raises LedgerUnreadable when the file is not a readable ledger.
    """

    BATCH_FILES = 1000
    BATCH_SECONDS = 0.5
    PURGE_CHUNK = 5000  # stale rows removed by each commit

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, int, int, str, float, str]] = []
        self._last_commit = time.monotonic()
        self._stale = True  # rows of a forgotten generation may be left: `commit` looks
        _check_header(self.path)
        private_file(self.path)  # a new one 0600 before SQLite writes it: its -wal and -shm follow
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
                self._db.execute(
                    "SELECT root, relpath, size, mtime_ns, dest, sent_at, checksum, generation FROM files LIMIT 0"
                )
                self._db.execute("SELECT root, dest, generation FROM pairs LIMIT 0")
                self._db.execute("SELECT experiment, sources, once, started_at, storage, marker FROM running LIMIT 0")
            except sqlite3.OperationalError as error:
                raise LedgerUnreadable(f"not a transfer ledger: {error}") from None
        except sqlite3.DatabaseError as error:
            self._db.close()
            self._raise_if_full(error)
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
                    " sent_at REAL NOT NULL, checksum TEXT NOT NULL DEFAULT '', PRIMARY KEY (root, relpath))"
                    " WITHOUT ROWID"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS running (id INTEGER PRIMARY KEY CHECK (id = 1),"
                    " experiment TEXT NOT NULL, sources TEXT NOT NULL, once INTEGER NOT NULL,"
                    " started_at REAL NOT NULL, storage TEXT NOT NULL DEFAULT '', marker TEXT NOT NULL DEFAULT '')"
                )
            if version == 1:  # 1 -> 2: relative paths as bytes; the storage and its marker id in the running row
                self._db.execute("UPDATE files SET relpath = CAST(relpath AS BLOB) WHERE typeof(relpath) = 'text'")
                self._db.execute("ALTER TABLE running ADD COLUMN storage TEXT NOT NULL DEFAULT ''")
                self._db.execute("ALTER TABLE running ADD COLUMN marker TEXT NOT NULL DEFAULT ''")
            if 1 <= version < 3:  # 2 -> 3: each file's checksum (none for the files sent before)
                self._db.execute("ALTER TABLE files ADD COLUMN checksum TEXT NOT NULL DEFAULT ''")
            if version < 4:  # 3 -> 4: generations, so that a forget is one row, whatever the files it forgets
                self._db.execute("ALTER TABLE files ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS pairs (root TEXT NOT NULL, dest TEXT NOT NULL,"
                    " generation INTEGER NOT NULL, PRIMARY KEY (root, dest)) WITHOUT ROWID"
                )
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, all or nothing; LedgerFull when state_dir has no space left for it."""
        try:
            with write_transaction(self._db):
                yield
        except sqlite3.Error as error:
            self._raise_if_full(error)
            raise

    @staticmethod
    def _raise_if_full(error: sqlite3.Error) -> None:
        """Raise LedgerFull when `error` says the disk is full (itself when it is one already); its
        callers name the ledger."""
        if isinstance(error, LedgerFull):
            raise error
        if disk_full(error):
            raise LedgerFull(f"state_dir full ({error})") from error

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
                "SELECT relpath, size, mtime_ns FROM files WHERE root = ? AND dest = ? AND generation = ?",
                (root, dest, self._generation(root, dest)),
            ).fetchall()
        return {os.fsdecode(relpath): (size, mtime_ns) for relpath, size, mtime_ns in rows}

    LOOKUP_CHUNK = 500  # relative paths per query (SQLite's bound on parameters is 999 in old builds)

    def sent_of(self, root: str, dest: str, relpaths: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Those of `relpaths` sent from `root` to `dest`, the buffered rows included: {relpath: (size,
        mtime_ns)}. One index seek each: the cost is that of the paths asked, not of the ledger."""
        wanted = list(dict.fromkeys(relpaths))
        found: dict[str, tuple[int, int]] = {}
        with self._lock:
            generation = self._generation(root, dest)
            for start in range(0, len(wanted), self.LOOKUP_CHUNK):
                chunk = [os.fsencode(rel) for rel in wanted[start : start + self.LOOKUP_CHUNK]]
                rows = self._db.execute(
                    "SELECT relpath, size, mtime_ns FROM files WHERE root = ? AND dest = ? AND generation = ?"
                    f" AND relpath IN ({','.join('?' * len(chunk))})",
                    (root, dest, generation, *chunk),
                )
                found.update((os.fsdecode(relpath), (size, mtime_ns)) for relpath, size, mtime_ns in rows)
            if self._rows:
                asked = set(wanted)
                for row_root, rel, size, mtime_ns, row_dest, *_ in self._rows:  # oldest first: the last one counts
                    if row_root == root and rel in asked:
                        if row_dest == dest:
                            found[rel] = (size, mtime_ns)
                        else:
                            found.pop(rel, None)
        return found

    def sent_after(self, root: str, dest: str, after: str, limit: int) -> list[tuple[str, int, int]]:
        """Up to `limit` files sent from `root` to `dest` whose relative path sorts after `after` (as bytes),
        in that order: [(relpath, size, mtime_ns)]. Pages through a root's rows without holding them all."""
        with self._lock:
            rows = self._db.execute(
                "SELECT relpath, size, mtime_ns FROM files WHERE root = ? AND relpath > ? AND dest = ?"
                " AND generation = ? ORDER BY relpath LIMIT ?",
                (root, os.fsencode(after), dest, self._generation(root, dest), limit),
            ).fetchall()
        return [(os.fsdecode(relpath), size, mtime_ns) for relpath, size, mtime_ns in rows]

    def _generation(self, root: str, dest: str) -> int:
        """The generation of the pair's rows that count (the caller holds the lock)."""
        row = self._db.execute("SELECT generation FROM pairs WHERE root = ? AND dest = ?", (root, dest)).fetchone()
        return row[0] if row else 0

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget the files sent from each root to its destination, in one transaction of one row a pair
        (the number of files does not matter): their rows no longer count, and `commit` removes them later.

        Rows still buffered for them are dropped too, so that a later commit cannot bring them back.
        """
        pairs = set(sources.items())
        with self._lock:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO pairs (root, dest, generation) VALUES (?, ?, 1)"
                    " ON CONFLICT (root, dest) DO UPDATE SET generation = generation + 1",
                    pairs,
                )
            self._rows = [row for row in self._rows if (row[0], row[4]) not in pairs]
            self._stale = True

    def sent_since(self, mark: float, storage: str) -> Iterator[tuple[str, int, int, float, str]]:
        """Files sent after `mark` into `storage` or a folder under it, the buffered ones committed first:
        (absolute path in storage, size, mtime_ns, sent_at, checksum or ''), oldest first.

        Read as they are iterated, through a cursor of a connection of their own: one snapshot of the ledger
        (the copies going on meanwhile neither seen nor held up), a million files never in memory at once."""
        self.commit()
        storage = os.path.normpath(storage)
        inside = storage.rstrip("/") + "/"
        reader = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            reader.execute("PRAGMA query_only = ON")
            rows = reader.execute(
                "SELECT dest, relpath, size, mtime_ns, sent_at, checksum FROM files WHERE sent_at > ?"
                " AND (dest = ? OR substr(dest, 1, ?) = ?) AND generation = coalesce((SELECT generation FROM pairs"
                " WHERE pairs.root = files.root AND pairs.dest = files.dest), 0) ORDER BY sent_at",
                (mark, storage, len(inside), inside),
            )
            folders: dict[str, str] = {}  # each destination as the start of its files' paths
            encoding = sys.getfilesystemencoding()
            for dest, relpath, size, mtime_ns, sent_at, checksum in rows:
                folder = folders.get(dest) or folders.setdefault(dest, os.path.join(dest, ""))
                yield folder + relpath.decode(encoding, "surrogateescape"), size, mtime_ns, sent_at, checksum
        finally:
            reader.close()

    def add(self, root: str, relpath: str, size: int, mtime_ns: int, dest: str, checksum: str = "") -> None:
        """Buffer one sent file, with the checksum its copy was verified against ('' if none); `commit` writes it."""
        with self._lock:
            self._rows.append((root, relpath, size, mtime_ns, dest, time.time(), checksum))

    def buffered(self) -> int:
        """The rows added and not committed yet."""
        with self._lock:
            return len(self._rows)

    def due(self) -> bool:
        with self._lock:
            return bool(self._rows) and (
                len(self._rows) >= self.BATCH_FILES or time.monotonic() - self._last_commit >= self.BATCH_SECONDS
            )

    def commit(self) -> int:
        """Write the buffered rows in one transaction, with up to `PURGE_CHUNK` rows of a forgotten
        generation removed; they stay buffered if it fails."""
        with self._lock:
            rows, self._last_commit = self._rows, time.monotonic()
            if not rows:
                return 0
            with self._transaction():
                generations = {(root, dest): gen for root, dest, gen in self._db.execute("SELECT * FROM pairs")}
                self._db.executemany(
                    "INSERT INTO files (root, relpath, size, mtime_ns, dest, sent_at, checksum, generation)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (root, relpath) DO UPDATE SET size = excluded.size,"
                    " mtime_ns = excluded.mtime_ns, dest = excluded.dest, sent_at = excluded.sent_at,"
                    " checksum = excluded.checksum, generation = excluded.generation",
                    [
                        (root, os.fsencode(rel), size, mtime_ns, dest, *rest, generations.get((root, dest), 0))
                        for root, rel, size, mtime_ns, dest, *rest in rows
                    ],
                )
                purged = self._purge() if self._stale else 0
            self._rows, self._stale = [], purged == self.PURGE_CHUNK
            return len(rows)

    def _purge(self) -> int:
        """Remove up to `PURGE_CHUNK` rows of a forgotten generation; how many (the caller holds the lock)."""
        return self._db.execute(
            "DELETE FROM files WHERE (root, relpath) IN (SELECT files.root, files.relpath FROM pairs"
            " JOIN files ON files.root = pairs.root AND files.dest = pairs.dest"
            " WHERE files.generation < pairs.generation LIMIT ?)",
            (self.PURGE_CHUNK,),
        ).rowcount

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
