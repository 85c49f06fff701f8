"""`ScicatCatalogue`: `ports.Catalogue` by SciCat's REST API (the v3 routes pyscicat speaks), behind a durable queue.

Why requests and not pyscicat: pyscicat's v3 client sends the token as a URL
query parameter (`?access_token=...`). A URL ends up in the web server's and
any proxy's access logs, and in the text of every requests exception, which
this IOC logs and shows on Status: the token would leak to whoever reads a log.
Here the token travels in an `Authorization: Bearer` header, which SciCat takes
too; the routes and the payload are pyscicat's (`auth/login`, `Datasets`,
`Datasets/{pid}/origdatablocks`).

Datasets wait in an SQLite queue in state_dir (one transaction per change) and
are sent by one thread of this adapter, with back-off while SciCat refuses or
is down, after a restart too. Never twice: the pid is chosen by the IOC once,
and a dataset SciCat already has (looked up before creating) is not created
again; its origdatablock likewise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import requests

from ..ioc.domain.model import CatalogError, InputError
from ..ioc.domain.ports import CatalogStatus, Dataset
from ..ioc.secrets import read_credentials
from ..ioc.statefiles import keep_aside

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")
STAGES = ("dataset", "datablock")  # what is left to send of a queued dataset
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def scicat_dataset(dataset: Dataset, source_host: str) -> dict:
    """The raw dataset SciCat takes (POST Datasets), as pyscicat's `RawDataset` model names its fields."""
    return {
        "pid": dataset.pid,
        "datasetName": dataset.name,
        "description": dataset.description,
        "type": "raw",
        "owner": dataset.owner,
        "ownerEmail": dataset.contact_email,
        "contactEmail": dataset.contact_email,
        "principalInvestigator": dataset.principal_investigator,
        "ownerGroup": dataset.owner_group,
        "accessGroups": list(dataset.access_groups),
        "proposalId": dataset.proposal_id,
        "sourceFolder": dataset.source_folder,
        "sourceFolderHost": source_host,
        "creationLocation": dataset.creation_location,
        "creationTime": dataset.creation_time,
        "endTime": dataset.end_time,
        "numberOfFiles": len(dataset.files),
        "size": sum(f.size for f in dataset.files),
        "isPublished": False,
        "scientificMetadata": dict(dataset.scientific_metadata),
    }


def scicat_datablock(dataset: Dataset) -> dict:
    """The origdatablock listing every file (POST Datasets/{pid}/origdatablocks)."""
    files = []
    for f in dataset.files:
        entry: dict[str, object] = {"path": f.path, "size": f.size, "time": f.mtime}
        if f.checksum:
            entry["chk"] = f.checksum
        files.append(entry)
    return {
        "datasetId": dataset.pid,
        "size": sum(f.size for f in dataset.files),
        "ownerGroup": dataset.owner_group,
        "accessGroups": list(dataset.access_groups),
        "dataFileList": files,
    }


class ScicatClient:
    """The few SciCat calls the catalogue needs, on one `requests.Session` (TLS verified), token in a header."""

    def __init__(self, url: str, credentials: Path, timeout: float = 10.0, session: requests.Session | None = None):
        self.url = url.rstrip("/") + "/"
        self.credentials = credentials
        self.timeout = timeout
        self.session = session or requests.Session()
        self._token = ""

    def has_dataset(self, pid: str) -> bool:
        response = self._call("GET", f"Datasets/{quote(pid, safe='')}", ok=(200, 404))
        return response.status_code == 200 and bool(response.content.strip()) and response.json() is not None

    def create_dataset(self, body: dict) -> None:
        self._call("POST", "Datasets", json=body, ok=(200, 201))

    def has_datablock(self, pid: str) -> bool:
        response = self._call("GET", f"Datasets/{quote(pid, safe='')}/origdatablocks", ok=(200, 404))
        return response.status_code == 200 and bool(response.json())

    def create_datablock(self, pid: str, body: dict) -> None:
        self._call("POST", f"Datasets/{quote(pid, safe='')}/origdatablocks", json=body, ok=(200, 201))

    def _login(self) -> None:
        try:
            user, password = read_credentials("scicat.credentials", self.credentials)
        except (InputError, OSError, UnicodeDecodeError) as error:
            raise CatalogError(f"no SciCat login: {error}") from None
        response = self._send("POST", "auth/login", json={"username": user, "password": password})
        if response.status_code not in (200, 201):
            raise CatalogError(f"SciCat refused the login of {user} ({_said(response)})")
        body = response.json()
        self._token = body.get("access_token") or body.get("id") or ""
        if not self._token:
            raise CatalogError("SciCat's login answer held no token")

    def _call(self, method: str, route: str, *, ok: tuple[int, ...], json: dict | None = None) -> requests.Response:
        """One call, logging in first (and again once when SciCat says the token expired)."""
        for attempt in (1, 2):
            if not self._token:
                self._login()
            response = self._send(method, route, json=json, token=self._token)
            if response.status_code == 401 and attempt == 1:
                self._token = ""
                continue
            if response.status_code not in ok:
                raise CatalogError(f"SciCat answered {method} {route.split('/')[0]} with {_said(response)}")
            return response
        raise AssertionError("unreachable")

    def _send(self, method: str, route: str, *, json: dict | None = None, token: str = "") -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return self.session.request(method, self.url + route, json=json, headers=headers, timeout=self.timeout)
        except requests.RequestException as error:
            raise Unreachable(f"SciCat at {self.url} did not answer ({type(error).__name__})") from None


class Unreachable(CatalogError):
    """SciCat did not answer at all: no use trying the other datasets of the queue now."""


def _said(response: requests.Response) -> str:
    """HTTP status and SciCat's message, short (never the request: it may hold a token or a password)."""
    try:
        message = response.json().get("message", "")
    except (ValueError, AttributeError):
        message = response.text[:200]
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return f"HTTP {response.status_code}" + (f": {str(message)[:300]}" if message else "")


class CatalogQueue:
    """The datasets waiting to be sent, in SQLite: one row each, with what is left to send of it."""

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
                " datablock TEXT NOT NULL, queued_at REAL NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS sent (id INTEGER PRIMARY KEY CHECK (id = 1), pid TEXT NOT NULL)")
        except sqlite3.DatabaseError as error:
            db.close()
            if error.sqlite_errorcode & 0xFF in _UNREADABLE:
                raise _Unreadable(str(error)) from None
            raise CatalogError(f"cannot open the catalogue queue {self.path}: {error}") from None
        try:
            db.execute("SELECT pid, stage, dataset, datablock, queued_at FROM queue LIMIT 0")
        except sqlite3.OperationalError as error:  # another program's database under this name
            db.close()
            raise _Unreadable(f"not a catalogue queue: {error}") from None
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, pid: str, dataset: dict, datablock: dict) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO queue VALUES (?, ?, ?, ?, ?)",
                       (pid, STAGES[0], json.dumps(dataset), json.dumps(datablock), time.time()))  # fmt: skip

    def waiting(self) -> list[tuple[str, str, dict, dict]]:
        """(pid, stage, dataset, datablock), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT pid, stage, dataset, datablock FROM queue ORDER BY queued_at").fetchall()
        return [(pid, stage, json.loads(dataset), json.loads(block)) for pid, stage, dataset, block in rows]

    def advance(self, pid: str, stage: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE queue SET stage = ? WHERE pid = ?", (stage, pid))

    def done(self, pid: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM queue WHERE pid = ?", (pid,))
            db.execute("INSERT OR REPLACE INTO sent (id, pid) VALUES (1, ?)", (pid,))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def last_sent(self) -> str:
        with self._lock:
            row = self._db.execute("SELECT pid FROM sent WHERE id = 1").fetchone()
        return row[0] if row else ""

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Unreadable(Exception):
    """The queue file is there but is no readable queue."""


class ScicatCatalogue:
    """`ports.Catalogue`: a queue in state_dir, sent to SciCat by a thread of its own with back-off."""

    FIRST_RETRY = 2.0  # seconds; doubled after each failed round up to LAST_RETRY
    LAST_RETRY = 300.0

    def __init__(self, client: ScicatClient, queue_path: Path, source_host: str = ""):
        self.client = client
        self.queue = CatalogQueue(queue_path)
        self.source_host = source_host or socket.getfqdn()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._answered: bool | None = False if self.queue.problem else None  # a queue kept aside: Error
        self._message = self.queue.problem
        self.retry = self.FIRST_RETRY

    def submit(self, dataset: Dataset) -> None:
        self.queue.put(dataset.pid, scicat_dataset(dataset, self.source_host), scicat_datablock(dataset))
        self._start()
        self._wake.set()

    def status(self) -> CatalogStatus:
        self._start()  # after a restart, what waits is sent without a new dataset
        with self._lock:
            answered, message = self._answered, self._message
        return CatalogStatus(self.queue.count(), self.queue.last_sent(), answered, message)

    def send_pending(self) -> int:
        """One round: send what waits, oldest first; how many were sent. A dataset SciCat refuses waits
        on and the others are tried; raises CatalogError, once the round is over, naming the first refusal,
        or at once when SciCat does not answer."""
        sent, refused = 0, []
        for pid, stage, dataset, datablock in self.queue.waiting():
            try:
                self._send_one(pid, stage, dataset, datablock)
            except Unreachable:
                raise
            except CatalogError as error:
                log.warning("catalogue: dataset %s refused: %s", pid, error)
                refused.append(error)
                continue
            sent += 1
        if refused:
            more = f" (and {len(refused) - 1} more refused)" if len(refused) > 1 else ""
            raise CatalogError(f"{refused[0]}{more}")
        return sent

    def _send_one(self, pid: str, stage: str, dataset: dict, datablock: dict) -> None:
        if stage == STAGES[0]:
            if not self.client.has_dataset(pid):  # a dataset created before a crash is not created again
                self.client.create_dataset(dataset)
            self.queue.advance(pid, STAGES[1])
        if not self.client.has_datablock(pid):
            self.client.create_datablock(pid, datablock)
        self.queue.done(pid)
        log.info("catalogue: dataset %s sent to SciCat (%s files)", pid, dataset.get("numberOfFiles"))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scicat", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            if self.queue.count():
                self._round()
            self._wake.wait(self.retry if self.queue.count() else None)
            self._wake.clear()

    def _round(self) -> None:
        try:
            self.send_pending()
        except CatalogError as error:
            with self._lock:
                self._answered, self._message = False, str(error)
            log.warning("catalogue: %s; retrying in %g s", error, self.retry)
            self.retry = min(self.retry * 2, self.LAST_RETRY)
        except Exception as error:  # a bug or a disk problem: the thread must live on
            log.exception("catalogue: sending failed unexpectedly")
            with self._lock:
                self._answered, self._message = False, f"sending failed: {error}"
            self.retry = min(self.retry * 2, self.LAST_RETRY)
        else:
            with self._lock:
                self._answered, self._message = True, ""
            self.retry = self.FIRST_RETRY
