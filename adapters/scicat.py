"""`ScicatCatalogue`: `ports.Catalogue` by the REST API of SciCat's backend, behind a durable queue.

Supported: SciCat's current backend (SciCatProject/backend, the NestJS one), routes under `/api/v3`:
`auth/login` gives a token, sent as an `Authorization: Bearer` header only; `POST datasets` creates a raw
dataset under the pid chosen here; `POST datasets/{pid}/origdatablocks` lists its files. Not supported:
the archived LoopBack backend (backend-v3), which logs in at `Users/login`, takes no Bearer token (it
wants the token in the URL, where access logs and exceptions keep it) and puts its prefix before every
pid, so that the IOC would look its datasets up under pids they do not have and create them again.

What is sent is what the backend's v3 DTOs declare and its validators take, no more: it refuses a whole
dataset for one field it does not declare or one value it does not take, and again on every retry. So
the raw dataset carries no `size` nor `numberOfFiles` (each origdatablock adds its own totals to its
dataset: sent with the dataset too, they would count twice), `ownerEmail` and `sourceFolderHost` only
when SciCat takes them, times with a `T` and an offset; each origdatablock is `{size, dataFileList}`
(plus `chkAlg` when its files have checksums; its dataset is the route's), of at most MAX_BLOCK_FILES
files; a dataset without files has none.

Why requests and not pyscicat: pyscicat's v3 client sends the token as a URL query parameter
(`?access_token=...`). A URL ends up in the web server's and any proxy's access logs, and in the text of
every requests exception, which this IOC logs and shows on Status: the token would leak to whoever reads
a log.

Datasets wait in an SQLite queue in state_dir (one transaction per change) and are sent by one thread of
this adapter, with back-off while SciCat refuses or is down, after a restart too. A dataset the queue cannot
take (a full state_dir: QueueFull, "state_dir full: ...") is refused at `submit`, so that its record is not
written either; a queue that cannot be read stops no thread: it is said once and tried again with back-off.
Never twice: the pid is chosen by the IOC once; a dataset SciCat already has (looked up before creating) is
not created again; each origdatablock SciCat takes is noted in the queue, and after a restart or a lost
answer SciCat's count of the dataset's origdatablocks (one small answer, however many files they list)
says whether the one posted last got there. Only an answer that is the dataset asked for (its pid) counts
as "there" or "created": a SciCat answering 200 to anything keeps the dataset queued and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import requests

from ..ioc.domain.catalog_values import catalog_email_problem, source_host_problem
from ..ioc.domain.model import CatalogError, DiskFull, InputError, printable
from ..ioc.domain.ports import CatalogFile, CatalogStatus, Dataset
from ..ioc.secrets import read_credentials
from ..ioc.statefiles import disk_full, keep_aside, write_transaction
from .http import MB, Answer, HttpFailure, bounded_request

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")
STAGES = ("dataset", "datablock")  # what is left to send of a queued dataset
MAX_BLOCK_FILES = 10_000  # files listed by one origdatablock
MAX_BLOCK_BYTES = 4 * MB  # and its JSON, about: well under SciCat's limit on a request's body (16 MB by default)
_UNREADABLE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_QUEUE_COLUMNS = ("pid", "stage", "dataset", "datablock", "queued_at")


# ------------------------------------------------------------------ what SciCat is sent


def scicat_dataset(dataset: Dataset, this_host: str = "") -> dict:
    """`dataset` as SciCat's v3 raw-dataset DTO declares it (POST datasets); `this_host` is its
    sourceFolderHost when the dataset names none. A value SciCat would refuse is left out."""
    host = dataset.source_folder_host or this_host
    body: dict[str, object] = {
        "pid": dataset.pid,
        "type": "raw",
        "datasetName": dataset.name,
        "owner": dataset.owner,
        "contactEmail": dataset.contact_email,
        "principalInvestigator": dataset.principal_investigator,
        "ownerGroup": dataset.owner_group,
        "accessGroups": list(dataset.access_groups),
        "sourceFolder": dataset.source_folder,
        "creationLocation": dataset.creation_location,
        "creationTime": scicat_time(dataset.creation_time),
        "endTime": scicat_time(dataset.end_time),
        "isPublished": False,
        "scientificMetadata": _finite(dict(dataset.scientific_metadata)),
    }
    optional = {
        "description": dataset.description,
        "ownerEmail": "" if catalog_email_problem(dataset.owner_email) else dataset.owner_email,
        "sourceFolderHost": "" if source_host_problem(host) else host,
        "proposalId": dataset.proposal_id,  # "" would be kept as a proposal named ""
        "runNumber": dataset.run_number,
    }
    body.update((key, value) for key, value in optional.items() if value)
    return body


def scicat_datablocks(files: Sequence[CatalogFile], max_files: int = MAX_BLOCK_FILES,
                      max_bytes: int = MAX_BLOCK_BYTES) -> list[dict]:  # fmt: skip
    """The origdatablocks listing `files` (POST datasets/{pid}/origdatablocks), in their order: the files of
    one checksum algorithm each (its chkAlg; none for files without a checksum), at most `max_files` files
    and about `max_bytes` of JSON each. None for no file: SciCat refuses an empty list."""
    by_algorithm: dict[str, list[dict]] = {}
    for file in files:
        algorithm, entry = _data_file(file)
        by_algorithm.setdefault(algorithm, []).append(entry)
    blocks = []
    for algorithm, entries in by_algorithm.items():
        for chunk in _chunks(entries, max_files, max_bytes):
            block: dict[str, object] = {"size": sum(entry["size"] for entry in chunk), "dataFileList": chunk}
            if algorithm:
                block["chkAlg"] = algorithm
            blocks.append(block)
    return blocks


def scicat_time(text: str) -> str:
    """An ISO 8601 time as SciCat reads it: in UTC, with a `T` and an offset (SciCat reads a time without one
    in its own zone, and no offset with seconds, as an old zone's may have); one without is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def _data_file(file: CatalogFile) -> tuple[str, dict]:
    """(its checksum's algorithm, '' without one; the file as SciCat's DataFile declares it)."""
    entry: dict[str, object] = {"path": file.path, "size": file.size, "time": scicat_time(file.mtime)}
    algorithm, _, digest = file.checksum.partition(":")
    if not digest:
        return "", entry
    entry["chk"] = digest
    return algorithm, entry


def _chunks(entries: list[dict], max_files: int, max_bytes: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    size = 0
    for entry in entries:
        length = len(json.dumps(entry)) + 1  # as requests sends it: ASCII, each non-ASCII character escaped
        if chunk and (len(chunk) >= max_files or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += length
    if chunk:
        yield chunk


def _finite(value: object) -> object:
    """`value` with each NaN and infinity (a PV may read so) as text: SciCat takes standard JSON only."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# ------------------------------------------------------------------ the calls


class ScicatClient:
    """The few SciCat calls the catalogue needs, on one `requests.Session` (TLS verified), token in a header.

    Each call is bounded (`http.bounded_request`): `timeout` seconds for the whole call, at most
    ANSWER_CAP bytes of answer, no redirect followed (the login carries the password, the others the token).
    """

    ANSWER_CAP = 16 * MB  # a dataset (its scientificMetadata); the other answers are small

    def __init__(self, url: str, credentials: Path, timeout: float = 10.0, session: requests.Session | None = None):
        self.url = url.rstrip("/") + "/"
        self.credentials = credentials
        self.timeout = timeout
        self.session = session or requests.Session()
        self.user = ""  # the account's name, once read from the credentials
        self._token = ""

    def has_dataset(self, pid: str) -> bool:
        """Whether SciCat holds dataset `pid`: only an answer that is this dataset (its pid) says so.
        404, or an empty answer, says not; anything else is refused."""
        answer = self._call("GET", "datasets/{pid}", pid=pid, ok=(200, 404), right="read")
        if answer.status == 404 or answer.body.strip() in (b"", b"null"):
            return False
        if _field(_decoded(answer), "pid") != pid:
            raise _unexpected(answer, "GET datasets/{pid}", f"dataset {pid}")
        return True

    def create_dataset(self, body: dict) -> None:
        answer = self._call("POST", "datasets", json=body, ok=(200, 201), right="create")
        if _field(_decoded(answer), "pid") != body["pid"]:
            raise _unexpected(answer, "POST datasets", f"dataset {body['pid']}")

    def count_datablocks(self, pid: str) -> int:
        """How many origdatablocks SciCat holds for dataset `pid`: its count, one small answer however many
        files they list."""
        answer = self._call("GET", "datasets/{pid}/origdatablocks/count", pid=pid, ok=(200,), right="read")
        count = _field(_decoded(answer), "count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise _unexpected(answer, "GET datasets/{pid}/origdatablocks/count", f"a count of {pid}'s origdatablocks")
        return count

    def create_datablock(self, pid: str, body: dict) -> None:
        answer = self._call("POST", "datasets/{pid}/origdatablocks", pid=pid, json=body, ok=(200, 201), right="add")
        if _field(_decoded(answer), "datasetId") != pid:
            raise _unexpected(answer, "POST datasets/{pid}/origdatablocks", f"an origdatablock of {pid}")

    def groups(self) -> list[str] | None:
        """The account's groups as SciCat sees them now (auth/whoami), None when its answer does not say."""
        groups = _field(_decoded(self._call("GET", "auth/whoami", ok=(200,), right="read")), "currentGroups")
        return [str(group) for group in groups] if isinstance(groups, list) else None

    def dataset_problem(self, body: dict) -> str:
        """What SciCat finds wrong with `body`, '' when nothing (datasets/isValid: it creates nothing, and
        checks the right to create it first, pid and ownerGroup included)."""
        said = _decoded(self._call("POST", "datasets/isValid", json=body, ok=(200, 201), right="create"))
        return "" if _field(said, "valid") is True else str(_field(said, "error") or "not valid")

    def login(self) -> None:
        """Log in as the credentials' account (auth/login) and keep its token."""
        try:
            user, password = read_credentials("scicat.credentials", self.credentials)
        except (InputError, OSError, UnicodeDecodeError) as error:
            raise CatalogError(f"no SciCat login: {error}") from None
        self.user = user
        answer = self._send("POST", "auth/login", json={"username": user, "password": password})
        if answer.status == 404:
            raise CatalogError(f"SciCat at {self.url} has no auth/login: not SciCat's current backend "
                               "(the archived LoopBack one is not supported)")  # fmt: skip
        if answer.status not in (200, 201):
            raise CatalogError(f"SciCat refused the login of {user} ({_said(answer)})")
        token = _field(_decoded(answer), "access_token")
        if not isinstance(token, str) or not token:
            raise CatalogError("SciCat's login answer held no access_token")
        self._token = token

    def _call(self, method: str, route: str, *, ok: tuple[int, ...], right: str, pid: str = "",
              json: dict | None = None) -> Answer:  # fmt: skip
        """One call of `route` ({pid} in it filled in), logging in first; again once when SciCat no longer
        takes the token: an expired one gives 401, one it cannot verify (its secret changed) makes the call
        anonymous, which gives 403. A 403 then is the account's lack of `right`: Forbidden."""
        path = route.format(pid=quote(pid, safe=""))
        for attempt in (1, 2):
            if not self._token:
                self.login()
            answer = self._send(method, path, json=json, token=self._token)
            if answer.status in (401, 403) and attempt == 1:
                self._token = ""
                continue
            if answer.status == 403:
                raise Forbidden(right, f"SciCat answered {method} {route} with {_said(answer)}")
            if answer.status not in ok:
                raise CatalogError(f"SciCat answered {method} {route} with {_said(answer)}")
            return answer
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, *, json: dict | None = None, token: str = "") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return bounded_request(self.session, method, self.url + path, deadline=self.timeout,
                                   max_bytes=self.ANSWER_CAP, json=json, headers=headers)  # fmt: skip
        except HttpFailure as error:
            raise Unreachable(f"SciCat at {self.url} {error}") from None


class Unreachable(CatalogError):
    """SciCat gave no usable answer (down, too slow, a redirect, an answer too large): no use trying
    the other datasets of the queue now."""


class Forbidden(CatalogError):
    """SciCat refused the account a right (403, with a fresh token): `right` is which, "read" (a dataset,
    its origdatablocks), "create" (a dataset with the IOC's pid) or "add" (an origdatablock)."""

    def __init__(self, right: str, message: str):
        super().__init__(message)
        self.right = right


def _decoded(answer: Answer) -> object:
    try:
        return answer.json()
    except ValueError:
        return None


def _field(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None


def _unexpected(answer: Answer, call: str, what: str) -> CatalogError:
    """An answer that is not what was asked (`what`): the dataset stays queued, and Status shows its start."""
    shown = printable(answer.body[:80].decode("utf-8", "backslashreplace")) or "nothing"
    return CatalogError(f"SciCat answered {call} with HTTP {answer.status} but not {what}: {shown}")


def _said(answer: Answer) -> str:
    """HTTP status and SciCat's message, short (never the request: it may hold a token or a password).
    Only a small answer is parsed for its message: a large error body costs its bytes, not their objects.
    A dataset SciCat refuses comes with its validator's findings as JSON text: their sentences are shown."""
    found = _decoded(answer) if len(answer.body) <= 64 * 1024 else None
    message = _field(found, "message") if found is not None else answer.body[:200].decode("utf-8", "replace")
    if isinstance(message, str) and message.startswith("["):
        message = _findings(message) or message
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return f"HTTP {answer.status}" + (f": {printable(str(message))[:300]}" if message else "")


def _findings(text: str) -> list[str]:
    """The sentences of class-validator's errors (as SciCat words a refused dataset), nested ones too."""
    try:
        errors = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []
    pending = list(errors) if isinstance(errors, list) else []
    while pending:
        error = pending.pop(0)
        if isinstance(error, dict):
            constraints = error.get("constraints")
            found += [str(c) for c in constraints.values()] if isinstance(constraints, dict) else []
            pending += error.get("children") or []
    return found


def _lacking(refused: Forbidden, account: str, dataset: dict) -> str:
    """The 403 `refused`, saying what the SciCat `account` lacks for `dataset`."""
    who, pid = f"the SciCat account {account}", dataset.get("pid", "")
    if refused.right == "read":
        groups = ", ".join(dataset.get("accessGroups") or []) or "none"
        need = (f"{who} may not read dataset {pid} back: it must be a member of one of its accessGroups "
                f"(scicat.access_groups: {groups})")  # fmt: skip
    else:
        what = f"create dataset {pid} under the IOC's pid" if refused.right == "create" else f"add files to {pid}"
        need = f"{who} may not {what}: it must be in SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS)"
    return f"{need} ({refused})"


def account_problems(client: ScicatClient, access_groups: Sequence[str], contact_email: str) -> list[str]:
    """`--check`: log in as the IOC does and say what the account lacks, each under the config key that
    mends it: creating datasets under the IOC's pids (tried on datasets/isValid, which creates nothing,
    with an ownerGroup of no one), and reading them back (one of its groups in `access_groups`)."""
    try:
        client.login()
        groups = client.groups()
    except Unreachable as error:
        return [f"scicat.url: {error}"]
    except CatalogError as error:
        return [f"scicat.credentials: {error}"]
    who = f"the SciCat account {client.user}"
    theirs = f" (its groups: {', '.join(groups) or 'none'})" if groups is not None else ""
    problems = []
    try:
        if found := client.dataset_problem(_probe(access_groups, contact_email)):
            problems.append(f"scicat: SciCat finds a dataset as the IOC makes it not valid: {found}")
    except Forbidden:
        problems.append(f"scicat.credentials: {who} may not create datasets under the IOC's pids: it must be in "
                        f"SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS){theirs}")  # fmt: skip
    except CatalogError as error:
        problems.append(f"scicat: a dataset under the IOC's pid (a lower-case UUID) is refused: {error}")
    if groups is not None and not set(groups) & set(access_groups):
        problems.append(f"scicat.access_groups: {who} is in none of them{theirs}: it could not read back the "
                        "datasets it creates; add one of its groups")  # fmt: skip
    return problems


def _probe(access_groups: Sequence[str], contact_email: str) -> dict:
    """A dataset as the IOC makes one, under a new pid and an ownerGroup no account is in: only an account
    that may create any dataset under a pid of its choosing may create it."""
    now = datetime.now(timezone.utc).isoformat()
    return scicat_dataset(Dataset(
        pid=str(uuid.uuid4()), name="dmagic-ioc-check", description="", owner="dmagic-ioc",
        contact_email=contact_email, principal_investigator="dmagic-ioc",
        owner_group=f"dmagic-ioc-check-{uuid.uuid4().hex[:8]}", access_groups=tuple(access_groups),
        proposal_id="", source_folder="/dmagic-ioc-check", creation_location="dmagic-ioc --check",
        creation_time=now, end_time=now, files=(), scientific_metadata={},
    ))  # fmt: skip


# ------------------------------------------------------------------ the queue


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


class ScicatCatalogue:
    """`ports.Catalogue`: a queue in state_dir, sent to SciCat by a thread of its own with back-off."""

    FIRST_RETRY = 2.0  # seconds; doubled after each failed round up to LAST_RETRY
    LAST_RETRY = 300.0

    def __init__(self, client: ScicatClient, queue_path: Path, source_host: str = ""):
        self.client = client
        self.queue = CatalogQueue(queue_path)
        host = source_host or socket.getfqdn()
        why = source_host_problem(host)
        self.source_host = "" if why else host  # the sourceFolderHost of a dataset that names none
        if why:
            log.info("catalogue: sourceFolderHost left out where scicat.source_folder_host is not set: this host's "
                     "name %r is not one SciCat takes (%s)", host, why)  # fmt: skip
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._answered: bool | None = False if self.queue.problem else None  # a queue kept aside: Error
        self._message = self.queue.problem
        self._logged = ""  # the last unexpected failure logged: each is logged once, not at every retry
        self._pending = 0  # the queue's length when last read
        self.retry = self.FIRST_RETRY

    def submit(self, dataset: Dataset) -> None:
        self.queue.put(dataset.pid, scicat_dataset(dataset, self.source_host), scicat_datablocks(dataset.files))
        self._start()
        self._wake.set()

    def status(self) -> CatalogStatus:
        """The queue now; a queue that cannot be read is an Error saying why (the pending count last read)."""
        self._start()  # after a restart, what waits is sent without a new dataset
        with self._lock:
            answered, message = self._answered, self._message
        try:
            pid, queued_at = self.queue.oldest() or ("", None)
            self._pending, last = self.queue.count(), self.queue.last_sent()
        except sqlite3.Error as error:
            return CatalogStatus(self._pending, "", False, _queue_unread(self.queue.path, error))
        since = datetime.fromtimestamp(queued_at, timezone.utc) if queued_at is not None else None
        return CatalogStatus(self._pending, last, answered, message, pid, since)

    def send_pending(self) -> int:
        """One round: send what waits, oldest first; how many were sent. A dataset SciCat refuses waits
        on and the others are tried; raises CatalogError, once the round is over, naming the first refusal,
        or at once when SciCat does not answer."""
        sent, refused = 0, []
        for pid in self.queue.pids():
            queued = self.queue.entry(pid)
            if queued is None:
                continue
            try:
                self._send_one(queued)
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

    def _send_one(self, queued: Queued) -> None:
        pid, blocks = queued.pid, queued.blocks
        try:
            created = False
            if queued.stage == STAGES[0]:
                if not self.client.has_dataset(pid):  # a dataset created before a crash is not created again
                    self.client.create_dataset(queued.dataset)
                    created = True
                self.queue.advance(pid, STAGES[1])
            taken = queued.blocks_sent
            if taken < len(blocks) and not created:
                taken = self._taken(pid, taken, len(blocks))
            for number in range(taken, len(blocks)):
                self.client.create_datablock(pid, blocks[number])
                self.queue.note_blocks(pid, number + 1)
        except Forbidden as refused:
            raise CatalogError(_lacking(refused, self.client.user, queued.dataset)) from None
        self.queue.done(pid)
        files = sum(len(block["dataFileList"]) for block in blocks)
        log.info("catalogue: dataset %s sent to SciCat (%d files in %d origdatablocks)", pid, files, len(blocks))

    def _taken(self, pid: str, noted: int, total: int) -> int:
        """How many of the `total` origdatablocks of `pid` SciCat has taken: the `noted` ones, and more when
        one got there whose answer was lost (a crash, a call cut at its deadline)."""
        there = self.client.count_datablocks(pid)
        if there > noted:
            noted = min(there, total)
            self.queue.note_blocks(pid, noted)
        return noted

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # started again should it ever end
                self._thread = threading.Thread(target=self._run, name="scicat", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """The sender: a round whenever datasets wait, then a wait (the back-off); a queue that cannot be read
        is said once and read again after the back-off, so the thread never ends."""
        while True:
            try:
                waiting = self.queue.count()
                if waiting:
                    self._round()
                    waiting = self.queue.count()
            except sqlite3.Error as error:
                self._failed(_queue_unread(self.queue.path, error), error)
                waiting = 1
            self._wake.wait(self.retry if waiting else None)
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
            self._failed(f"{'state_dir full: ' if disk_full(error) else ''}sending failed: {error}", error)
        else:
            with self._lock:
                self._answered, self._message = True, ""
            self._logged = ""
            self.retry = self.FIRST_RETRY

    def _failed(self, message: str, error: Exception) -> None:
        """An unexpected failure of the sender: an Error saying `message`, logged once (a traceback only for a
        bug, not for a disk or database error), and the back-off."""
        with self._lock:
            self._answered, self._message = False, message
        if message != self._logged:
            self._logged = message
            if isinstance(error, (sqlite3.Error, OSError)):
                log.warning("catalogue: %s; retrying with back-off (said once)", message)
            else:
                log.exception("catalogue: %s", message)
        self.retry = min(self.retry * 2, self.LAST_RETRY)


def _queue_unread(path: Path, error: sqlite3.Error) -> str:
    full = "state_dir full: " if disk_full(error) else ""
    return f"{full}cannot read the catalogue queue {path}: {error}"
