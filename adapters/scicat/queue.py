"""`CatalogQueue`: the datasets waiting to be sent to SciCat, durably, in an SQLite file in state_dir.

A dataset goes in as its files come (`stage`): its body first, then each origdatablock as it fills, then its
commit. Staged, it is not sent, and a restart forgets it (its record was never put in place); committed, it
waits to be sent. One dataset is staged at a time. Each change is one transaction, so that the sender is never
held up for long. A dataset the queue cannot take (a full state_dir: QueueFull, "state_dir full: ...") is
refused, so that its record is not written either; a file that is no queue is kept aside and a new queue
started (`problem` says so). Each origdatablock SciCat takes is noted, so that none is posted twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...ioc.domain.catalog_ports import CatalogFile
from ...ioc.domain.catalog_values import catalog_email_problem, source_host_problem
from ...ioc.domain.errors import CatalogError, DiskFull
from ...ioc.statefiles import disk_full, keep_aside, write_transaction
from .bodies import Datablocks, scicat_datablocks

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")
STAGES = ("dataset", "datablock")  # what is left to send of a queued dataset
STAGED = "staged"  # a dataset still going in: not sent
NO_BLOCKS = "[]"  # the `datablock` column of a dataset whose origdatablocks are in the table `blocks`
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_QUEUE_COLUMNS = ("pid", "stage", "dataset", "datablock", "queued_at")
_WAITING = f"stage != '{STAGED}'"
WAL_PAGES = 1000  # SQLite's default: its write-ahead log is copied into the database past that many pages
WAL_KEPT = 16 << 20  # bytes of the write-ahead log kept once copied (a million files' blocks make 250 MB)


@dataclass(frozen=True)
class Queued:
    """A dataset waiting to be sent: what is left of it (`stage`), its body, how many origdatablocks it has
    and how many of them SciCat has taken."""

    pid: str
    stage: str
    dataset: dict
    blocks: int
    blocks_sent: int


class CatalogQueue:
    """The datasets waiting to be sent, in SQLite: a row each, with what is left to send of it, and its
    origdatablocks in order, a row each (table `blocks`), read one at a time.

    A dataset an earlier version queued holds its origdatablocks in its `datablock` column (a list; or one
    origdatablock, with fields SciCat refuses: read as this version would have queued it): they are moved
    into `blocks` when its turn comes. `blocks_sent` counts the origdatablocks SciCat has taken, in order."""

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
            db.execute(f"PRAGMA journal_size_limit = {WAL_KEPT}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue (pid TEXT PRIMARY KEY, stage TEXT NOT NULL, dataset TEXT NOT NULL,"
                " datablock TEXT NOT NULL, queued_at REAL NOT NULL, blocks_sent INTEGER NOT NULL DEFAULT 0)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS blocks (pid TEXT NOT NULL, number INTEGER NOT NULL,"
                       " body TEXT NOT NULL, PRIMARY KEY (pid, number))")  # fmt: skip
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
        with contextlib.suppress(sqlite3.Error), write_transaction(db):  # a full state_dir: at the next start
            _forget_staged(db)
        return db

    @contextlib.contextmanager
    def _transaction(self, *, staging: str = "") -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it; the error that stopped it is the one
        raised (on a full disk SQLite has already rolled back).

        Of a dataset `staging` ("block", "commit"), the write-ahead log is not copied into the database after
        it: the sender's next transaction does it, not the command that stages a million files. An origdatablock
        staged is not waited on the disk for either: the commit of its dataset makes it durable with it."""
        with self._lock:
            if staging:
                self._db.execute("PRAGMA wal_autocheckpoint = 0")
                self._db.execute(f"PRAGMA synchronous = {'NORMAL' if staging == 'block' else 'FULL'}")
            try:
                with write_transaction(self._db) as db:
                    yield db
            finally:
                if staging:
                    self._db.execute("PRAGMA synchronous = FULL")
                    self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")

    def stage(self, pid: str, dataset: dict) -> Staging:
        """Start putting a dataset in (its body now; its origdatablocks through the Staging): not sent before
        its commit. QueueFull ("state_dir full: ...") or CatalogError when the queue cannot take it."""
        staging = Staging(self, pid, str(dataset.get("datasetName") or pid))
        with staging.refusals(), self._transaction() as db:
            _forget_staged(db)  # one left by a drop that found the disk full
            db.execute("INSERT INTO queue VALUES (?, ?, ?, ?, ?, 0)",
                       (pid, STAGED, json.dumps(dataset), NO_BLOCKS, time.time()))  # fmt: skip
        return staging

    def put(self, pid: str, dataset: dict, blocks: Iterable[dict]) -> None:
        """Queue a dataset and its origdatablocks, durably, all of it or (QueueFull, CatalogError) none."""
        staging = self.stage(pid, dataset)
        try:
            for block in blocks:
                staging.add_block(json.dumps(block))
            staging.commit()
        except BaseException:
            staging.drop()
            raise

    def pids(self) -> list[str]:
        """The pids waiting, oldest first (each read whole only when its turn comes)."""
        with self._lock:
            return [pid for (pid,) in self._db.execute(f"SELECT pid FROM queue WHERE {_WAITING} ORDER BY queued_at")]

    def entry(self, pid: str) -> Queued | None:
        with self._lock:
            row = self._db.execute(f"SELECT stage, dataset, datablock, blocks_sent FROM queue WHERE pid = ? AND "
                                   f"{_WAITING}", (pid,)).fetchone()  # fmt: skip
        if row is None:
            return None
        stage, dataset, earlier, sent = row[0], json.loads(row[1]), row[2], row[3]
        if earlier != NO_BLOCKS:
            dataset = self._move_earlier_blocks(pid, dataset, json.loads(earlier))
        with self._lock:
            (blocks,) = self._db.execute("SELECT COUNT(*) FROM blocks WHERE pid = ?", (pid,)).fetchone()
        return Queued(pid, stage, dataset, blocks, sent)

    def block(self, pid: str, number: int) -> dict:
        """Origdatablock `number` (from 0) of dataset `pid`."""
        with self._lock:
            row = self._db.execute("SELECT body FROM blocks WHERE pid = ? AND number = ?", (pid, number)).fetchone()
        if row is None:
            raise CatalogError(f"the catalogue queue {self.path} has no origdatablock {number} of dataset {pid}")
        return json.loads(row[0])

    def _move_earlier_blocks(self, pid: str, dataset: dict, blocks: list[dict] | dict) -> dict:
        """Move the origdatablocks an earlier version queued with dataset `pid` into `blocks`: its body, as
        this version queues it."""
        if isinstance(blocks, dict):
            dataset, blocks = _as_queued_now(dataset, blocks)
        with self._transaction() as db:
            db.execute("DELETE FROM blocks WHERE pid = ?", (pid,))
            db.executemany("INSERT INTO blocks VALUES (?, ?, ?)",
                           [(pid, number, json.dumps(block)) for number, block in enumerate(blocks)])  # fmt: skip
            db.execute("UPDATE queue SET dataset = ?, datablock = ? WHERE pid = ?",
                       (json.dumps(dataset), NO_BLOCKS, pid))  # fmt: skip
        return dataset

    def advance(self, pid: str, stage: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE queue SET stage = ? WHERE pid = ?", (stage, pid))

    def note_blocks(self, pid: str, taken: int) -> None:
        """SciCat has taken the first `taken` origdatablocks of `pid`."""
        with self._transaction() as db:
            db.execute("UPDATE queue SET blocks_sent = ? WHERE pid = ?", (taken, pid))

    def done(self, pid: str) -> None:
        with self._transaction() as db:
            _forget(db, pid)
            db.execute("INSERT OR REPLACE INTO sent (id, pid) VALUES (1, ?)", (pid,))

    def count(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM queue WHERE {_WAITING}").fetchone()[0]

    def oldest(self) -> tuple[str, float] | None:
        """(pid, time it was queued, in seconds since the epoch) of the dataset waiting longest."""
        with self._lock:
            return self._db.execute(
                f"SELECT pid, queued_at FROM queue WHERE {_WAITING} ORDER BY queued_at LIMIT 1"
            ).fetchone()

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


class Staging:
    """A dataset going into the queue: its origdatablocks added in order, then committed (it waits to be
    sent) or dropped (nothing of it stays)."""

    def __init__(self, queue: CatalogQueue, pid: str, name: str):
        self.queue, self.pid, self.name = queue, pid, name
        self._blocks = 0

    def add_block(self, block: str) -> None:
        """The next origdatablock, as its JSON text."""
        with self.refusals(), self.queue._transaction(staging="block") as db:
            db.execute("INSERT INTO blocks VALUES (?, ?, ?)", (self.pid, self._blocks, block))
        self._blocks += 1

    def commit(self) -> None:
        with self.refusals(), self.queue._transaction(staging="commit") as db:
            db.execute("UPDATE queue SET stage = ?, queued_at = ? WHERE pid = ? AND stage = ?",
                       (STAGES[0], time.time(), self.pid, STAGED))  # fmt: skip

    def drop(self) -> None:
        """Forget it, quietly (on a full disk, at the next dataset staged or the next start)."""
        with contextlib.suppress(sqlite3.Error), self.queue._transaction() as db:
            _forget(db, self.pid)

    @contextlib.contextmanager
    def refusals(self) -> Iterator[None]:
        """An SQLite error as QueueFull ("state_dir full: ...") or CatalogError, naming the dataset."""
        try:
            yield
        except sqlite3.Error as error:
            message = f"dataset {self.name} not queued for SciCat in {self.queue.path}: {error}"
            raise (QueueFull(f"state_dir full: {message}") if disk_full(error) else CatalogError(message)) from error


class StagedDataset:
    """`ports.StagedDataset`: a dataset's files made into origdatablocks as they come (`Datablocks`), each
    staged in the queue once full; `on_commit` called once it waits to be sent."""

    def __init__(self, staging: Staging, blocks: Datablocks, on_commit: Callable[[], None]):
        self.staging, self.blocks, self.on_commit = staging, blocks, on_commit

    def add(self, files: Iterable[CatalogFile]) -> None:
        for block in self.blocks.add(files):
            self.staging.add_block(block)

    def commit(self) -> None:
        for block in self.blocks.rest():
            self.staging.add_block(block)
        self.staging.commit()
        self.on_commit()

    def drop(self) -> None:
        self.staging.drop()


def _forget(db: sqlite3.Connection, pid: str) -> None:
    db.execute("DELETE FROM blocks WHERE pid = ?", (pid,))
    db.execute("DELETE FROM queue WHERE pid = ?", (pid,))


def _forget_staged(db: sqlite3.Connection) -> None:
    """Forget the datasets left staged (a drop that found the disk full, a stop while one went in)."""
    for (pid,) in db.execute("SELECT pid FROM queue WHERE stage = ?", (STAGED,)).fetchall():
        _forget(db, pid)


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
