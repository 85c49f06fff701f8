"""`CatalogQueue`: the datasets waiting to be sent to SciCat, durably, in an SQLite file in state_dir.

One transaction per change. A dataset the queue cannot take (a full state_dir: QueueFull, "state_dir
full: ...") is refused at `put`, so that its record is not written either; a file that is no queue is
kept aside and a new queue started (`problem` says so). Each origdatablock SciCat takes is noted, so that
none is posted twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...ioc.domain.catalog_values import catalog_email_problem, source_host_problem
from ...ioc.domain.errors import CatalogError, DiskFull
from ...ioc.domain.ports import CatalogFile
from ...ioc.statefiles import disk_full, keep_aside, write_transaction
from .bodies import scicat_datablocks

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")
STAGES = ("dataset", "datablock")  # what is left to send of a queued dataset
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_QUEUE_COLUMNS = ("pid", "stage", "dataset", "datablock", "queued_at")


@dataclass(frozen=True)
class Queued:
    """A dataset waiting to be sent: what is left of it (`stage`), its body, its origdatablocks and how
    many of them SciCat has taken."""

    pid: str
    stage: str
    dataset: dict
    blocks: list[dict]
    blocks_sent: int


class CatalogQueue:
    """The datasets waiting to be sent, in SQLite: one row each, with what is left to send of it.

    Its `datablock` column holds the list of the dataset's origdatablocks (one origdatablock, with fields
    SciCat refuses, in a queue of an earlier version: read as this version would have queued it), and
    `blocks_sent` how many of them SciCat has taken, in order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.problem = ""  # set when an unreadable file was kept aside
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except _Unreadable as error:
            aside = keep_aside(self.path, SQLITE_COMPANIONS)
            self.problem = f"catalogue queue {self.path.name} could not be read ({error}): kept as {aside.name}"
            log.warning("%s", self.problem)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue (pid TEXT PRIMARY KEY, stage TEXT NOT NULL, dataset TEXT NOT NULL,"
                " datablock TEXT NOT NULL, queued_at REAL NOT NULL, blocks_sent INTEGER NOT NULL DEFAULT 0)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS sent (id INTEGER PRIMARY KEY CHECK (id = 1), pid TEXT NOT NULL)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(queue)")}
        except sqlite3.DatabaseError as error:
            db.close()
            if error.sqlite_errorcode & 0xFF in _UNREADABLE:
                raise _Unreadable(str(error)) from None
            raise CatalogError(f"cannot open the catalogue queue {self.path}: {error}") from None
        missing = [column for column in _QUEUE_COLUMNS if column not in columns]
        if missing:  # another program's database under this name
            db.close()
            raise _Unreadable(f"not a catalogue queue: no column {', '.join(missing)}")
        if "blocks_sent" not in columns:  # an earlier version's queue
            db.execute("ALTER TABLE queue ADD COLUMN blocks_sent INTEGER NOT NULL DEFAULT 0")
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it; the error that stopped it is the one
        raised (on a full disk SQLite has already rolled back)."""
        with self._lock, write_transaction(self._db) as db:
            yield db

    def put(self, pid: str, dataset: dict, blocks: list[dict]) -> None:
        """Queue a dataset, durably; QueueFull ("state_dir full: ...") or CatalogError when the queue cannot
        take it (then nothing of it is queued)."""
        try:
            with self._transaction() as db:
                db.execute("INSERT OR IGNORE INTO queue VALUES (?, ?, ?, ?, ?, 0)",
                           (pid, STAGES[0], json.dumps(dataset), json.dumps(blocks), time.time()))  # fmt: skip
        except sqlite3.Error as error:
            message = f"dataset {dataset.get('datasetName') or pid} not queued for SciCat in {self.path}: {error}"
            raise (QueueFull(f"state_dir full: {message}") if disk_full(error) else CatalogError(message)) from error

    def pids(self) -> list[str]:
        """The pids waiting, oldest first (each read whole only when its turn comes)."""
        with self._lock:
            return [pid for (pid,) in self._db.execute("SELECT pid FROM queue ORDER BY queued_at")]

    def entry(self, pid: str) -> Queued | None:
        with self._lock:
            row = self._db.execute("SELECT stage, dataset, datablock, blocks_sent FROM queue WHERE pid = ?",
                                   (pid,)).fetchone()  # fmt: skip
        if row is None:
            return None
        stage, dataset, blocks, sent = row[0], json.loads(row[1]), json.loads(row[2]), row[3]
        if isinstance(blocks, dict):
            dataset, blocks = _as_queued_now(dataset, blocks)
        return Queued(pid, stage, dataset, blocks, sent)

    def advance(self, pid: str, stage: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE queue SET stage = ? WHERE pid = ?", (stage, pid))

    def note_blocks(self, pid: str, taken: int) -> None:
        """SciCat has taken the first `taken` origdatablocks of `pid`."""
        with self._transaction() as db:
            db.execute("UPDATE queue SET blocks_sent = ? WHERE pid = ?", (taken, pid))

    def done(self, pid: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM queue WHERE pid = ?", (pid,))
            db.execute("INSERT OR REPLACE INTO sent (id, pid) VALUES (1, ?)", (pid,))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def oldest(self) -> tuple[str, float] | None:
        """(pid, time it was queued, in seconds since the epoch) of the dataset waiting longest."""
        with self._lock:
            return self._db.execute("SELECT pid, queued_at FROM queue ORDER BY queued_at LIMIT 1").fetchone()

    def last_sent(self) -> str:
        with self._lock:
            row = self._db.execute("SELECT pid FROM sent WHERE id = 1").fetchone()
        return row[0] if row else ""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def unread(self, error: sqlite3.Error) -> str:
        """`error`, met reading the queue, in a sentence for Status."""
        full = "state_dir full: " if disk_full(error) else ""
        return f"{full}cannot read the catalogue queue {self.path}: {error}"


class _Unreadable(Exception):
    """The queue file is there but is no readable queue."""


class QueueFull(DiskFull):
    """No space left in state_dir for a dataset in the queue: said as "state_dir full: ...", and on Catalog:Health."""

    system = "Catalog"


def _as_queued_now(dataset: dict, block: dict) -> tuple[dict, list[dict]]:
    """A dataset an earlier version queued with one origdatablock, as this version queues it: without the
    totals SciCat counts itself, an `ownerEmail`, `sourceFolderHost` or empty `proposalId` SciCat would
    refuse; its files in origdatablocks SciCat takes."""
    dataset = {key: value for key, value in dataset.items() if key not in ("size", "numberOfFiles")}
    for key, refused in (("ownerEmail", catalog_email_problem), ("sourceFolderHost", source_host_problem),
                         ("proposalId", lambda value: not value)):  # fmt: skip
        if key in dataset and refused(str(dataset[key] or "")):
            del dataset[key]
    files = [CatalogFile(f["path"], f["size"], f["time"], f.get("chk", "")) for f in block.get("dataFileList", [])]
    return dataset, scicat_datablocks(files)
