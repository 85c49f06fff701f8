"""`FirstFound`: when this IOC first found each file in the DM file catalogue, kept in SQLite in state_dir.

The catalogue gives a file's mtime, not when it arrived: `ApsDaq.sent_since` takes a file as sent when this
IOC first found it there, the time this record keeps.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...ioc.domain.errors import DiskFull, DMError
from ...ioc.statefiles import disk_full, keep_aside, private_file, write_transaction

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")  # files beside the record that hold part of it
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class _Unreadable(Exception):
    """The record file is there but is not a readable record (garbage, corrupt, another program's)."""


class FirstFound:
    """When this IOC first found each file in the DM file catalogue, by storage: what `sent_since` counts.

    SQLite in state_dir, opened on first use; rows are only added, and dropped when their storage is
    deleted. One found unreadable is kept aside and a fresh one started (DMError saying so, once).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def times(self, storage: str) -> dict[str, float]:
        """{path: when first found} of the files of `storage`."""
        with self._lock:
            return dict(self._read("SELECT path, found_at FROM found WHERE storage = ?", (storage,)))

    def add(self, storage: str, times: Mapping[str, float]) -> None:
        """Record files of `storage` first found now, all or none."""
        with self._lock:
            self._write("INSERT OR IGNORE INTO found VALUES (?, ?, ?)", [(storage, *item) for item in times.items()])

    def forget_under(self, folders: Iterable[str]) -> int:
        """Drop the files of every storage that holds one of `folders` (it was deleted); how many storages."""
        folders = [folder.rstrip("/") + "/" for folder in folders]
        with self._lock:
            storages = [row[0] for row in self._read("SELECT DISTINCT storage FROM found")]
            gone = [(s,) for s in storages if any(folder.startswith(s.rstrip("/") + "/") for folder in folders)]
            self._write("DELETE FROM found WHERE storage = ?", gone)
            return len(gone)

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        db = self._open()
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise self._error("cannot read", error) from None

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """`sql` for each of `rows`, in one transaction; a full disk is a DiskFull."""
        if not rows:
            return
        db = self._open()
        try:
            with write_transaction(db):
                db.executemany(sql, rows)
        except sqlite3.Error as error:
            raise self._error("cannot write", error) from None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._connect()
            except _Unreadable as reason:
                try:
                    aside = keep_aside(self.path, SQLITE_COMPANIONS)
                except OSError as error:
                    raise DMError(
                        f"the DM file record {self.path} cannot be read ({reason}) nor kept aside "
                        f"({error.strerror}): move it away by hand"
                    ) from None
                self._db = self._connect()
                notice = (
                    f"the DM file record {self.path} could not be read ({reason}): kept as {aside.name}, started "
                    "afresh (a file modified before the last dataset counts as in it); Catalog makes this dataset"
                )
                log.error("%s", notice)
                raise DMError(notice) from None
        return self._db

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(self.path)  # a new one 0600 before SQLite writes it: its -wal and -shm follow
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        except (OSError, sqlite3.Error) as error:
            raise self._error("cannot open", error) from None
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS found (storage TEXT NOT NULL, path TEXT NOT NULL,"
                " found_at REAL NOT NULL, PRIMARY KEY (storage, path)) WITHOUT ROWID"
            )
            columns = [row[1] for row in db.execute("PRAGMA table_info(found)")]
        except sqlite3.DatabaseError as error:
            db.close()
            if error.sqlite_errorcode & 0xFF in _UNREADABLE:
                raise _Unreadable(str(error)) from None
            raise self._error("cannot open", error) from None
        if columns != ["storage", "path", "found_at"]:  # another program's database under this name
            db.close()
            raise _Unreadable(f"not a DM file record: its table has columns {', '.join(columns)}")
        return db

    def _error(self, doing: str, error: OSError | sqlite3.Error) -> DMError:
        message = f"{doing} the DM file record {self.path}: {error}"
        return DiskFull(f"state_dir full: {message}") if disk_full(error) else DMError(message)
