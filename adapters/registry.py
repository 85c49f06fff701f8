"""The IOC's durable state in one SQLite file: the local DM's experiments and the IOC's own memory.

It is the `ports.StateStore` of every backend (the selection, who was e-mailed,
the Globus rule ids) and the experiment registry of the `local` DM backend.
Every operation is one transaction, so a crash between two writes never leaves
half an experiment behind; the schema is versioned with `PRAGMA user_version`.
Methods block (disk): the IOC calls them off the event loop, possibly from
different threads one at a time, so one connection is shared under a lock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..ioc.domain.model import Beamtime, DiskFull, DMError, Experiment, ExperimentUser, InputError, Person
from ..ioc.statefiles import disk_full, keep_aside, private_file, write_transaction

log = logging.getLogger(__name__)


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE experiments (
            name TEXT PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            gup TEXT NOT NULL DEFAULT '',
            esaf TEXT NOT NULL DEFAULT '',
            start TEXT NOT NULL DEFAULT '',
            "end" TEXT NOT NULL DEFAULT '',
            year_month TEXT NOT NULL DEFAULT '',
            storage_directory TEXT NOT NULL DEFAULT '',
            data_directory TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX experiments_by_created ON experiments (created)")
    conn.execute(
        """CREATE TABLE experiment_users (
            experiment TEXT NOT NULL REFERENCES experiments (name) ON DELETE CASCADE,
            username TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL DEFAULT '',
            institution TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT 'proposal',
            PRIMARY KEY (experiment, username)
        )"""
    )
    # The state tables hold names of experiments that may live in the APS DM
    # system rather than in `experiments`: no foreign key to it.
    conn.execute("CREATE TABLE selection (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL)")
    conn.execute(
        """CREATE TABLE emailed (
            experiment TEXT NOT NULL,
            username TEXT NOT NULL,
            sent REAL NOT NULL,
            PRIMARY KEY (experiment, username)
        )"""
    )
    conn.execute(
        """CREATE TABLE globus_rules (
            experiment TEXT NOT NULL,
            username TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            PRIMARY KEY (experiment, username)
        )"""
    )


def _schema_v2(conn: sqlite3.Connection) -> None:
    """The proposal each experiment was made for (what its PVs show after a restart), and the beamtime
    the IOC last followed by itself (dm.follow_schedule)."""
    conn.execute("CREATE TABLE proposals (experiment TEXT PRIMARY KEY, proposal TEXT NOT NULL)")
    conn.execute("CREATE TABLE followed (id INTEGER PRIMARY KEY CHECK (id = 1), beamtime TEXT NOT NULL)")


# MIGRATIONS[i] takes the schema from version i to version i + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_schema_v1, _schema_v2)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path | str = "") -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; return the version found.

    A file written by a newer version is refused rather than guessed at.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise DMError(
            f"registry {path} has schema version {found}, newer than this dmagic-ioc knows ({SCHEMA_VERSION}); "
            "upgrade dmagic-ioc or point ioc.state_dir elsewhere"
        )
    for version in range(found, SCHEMA_VERSION):
        with write_transaction(conn):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        log.info("registry %s: schema migrated to version %s", path, version + 1)
    return found


def _check_readable(path: Path) -> None:
    """Read every page of the file as it is on disk (`PRAGMA quick_check`), changing nothing, its WAL
    neither: corrupt pages show now, not at some later command. Raises _Unreadable."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # none yet (a new registry), or the open that follows says why
    if size == 0:
        try:
            wal_size = Path(f"{path}-wal").stat().st_size
        except OSError:
            wal_size = 0
        if wal_size == 0:
            raise _Unreadable("the file is empty")
        return
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return
    try:
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.Error as error:
        if error.sqlite_errorcode & 0xFF in _UNREADABLE:
            raise _Unreadable(str(error)) from None
        return
    finally:
        conn.close()
    if rows != [("ok",)]:
        said = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split()) if rows else "no answer"
        raise _Unreadable(f"integrity check: {said[:60]}")


def unreadable(path: Path) -> str:
    """Why the registry file at `path` cannot be read ('' when it can, or is not there): for --check."""
    try:
        _check_readable(Path(path))
    except _Unreadable as error:
        return str(error)
    return ""


def experiment_folders(storage_root: Path, limit: int = 2) -> list[str]:
    """Up to `limit` folders two levels under `storage_root` (`2026-11/2026-11-Smith-1`, `2026/1234`):
    where every layout keeps an experiment. Hidden names are left out; an unreadable root gives []."""
    found: list[str] = []
    try:
        with os.scandir(storage_root) as tops:
            for top in sorted(tops, key=lambda entry: entry.name):
                if top.name.startswith(".") or not top.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(top.path) as inner:
                    found += sorted(
                        f"{top.name}/{entry.name}"
                        for entry in inner
                        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
                    )
                if len(found) >= limit:
                    break
    except OSError:
        pass  # a root that cannot be listed: --check and Create name it
    return found[:limit]


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def _from_iso(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def proposal_json(proposal: Beamtime) -> str:
    """A beamtime as JSON: its fields, times in ISO 8601, people as objects."""
    fields = dataclasses.asdict(proposal)
    fields["start"], fields["end"] = _iso(proposal.start), _iso(proposal.end)
    return json.dumps(fields, ensure_ascii=False)


def proposal_from_json(text: str) -> Beamtime:
    fields = json.loads(text)
    for group in ("people", "esaf_people"):
        fields[group] = tuple(Person(**person) for person in fields.get(group, ()))
    fields["start"], fields["end"] = _from_iso(fields["start"]), _from_iso(fields["end"])
    return Beamtime(**fields)


SQLITE_COMPANIONS = ("-wal", "-shm")  # files beside the registry that hold part of it
_UNREADABLE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _Unreadable(Exception):
    """The registry file is there but is no readable SQLite database (garbage, truncated, corrupt pages)."""


class Registry:
    """Experiments, users, selection, e-mailed users and Globus rule ids in one SQLite file.

    A file that cannot be read is kept aside (`registry.sqlite.corrupt-<time>`)
    and an empty registry started in its place; `problem` then says so in a
    sentence for Status. A file that cannot be opened for another reason
    (permissions, a newer schema) is refused with a DMError, never set aside.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.RLock()
        self.problem = ""  # set when the file found could not be read and was kept aside
        try:
            self._conn = self._open()
        except _Unreadable as error:
            self._conn = self._start_afresh(str(error))

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _check_readable(self.path)
            private_file(self.path)  # a new one 0600 before SQLite writes it: its -wal and -shm follow
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as error:
            raise self._error("cannot open the registry", error) from error
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # Commits are rare (one per command): pay the fsync for durability.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, self.path)
        except sqlite3.Error as error:
            conn.close()
            if error.sqlite_errorcode & 0xFF in _UNREADABLE:
                raise _Unreadable(str(error)) from None
            raise self._error("cannot open the registry", error) from error
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, doing: str, error: OSError | sqlite3.Error) -> DMError:
        """`error` in a sentence for Status; a DiskFull ("state_dir full: ...") when no space was left."""
        message = f"{doing} {self.path}: {error}"
        return DiskFull(f"state_dir full: {message}") if disk_full(error) else DMError(message)

    def storage_problem(self, storage_root: Path, *, advice: bool = True) -> str:
        """A warning when the registry lists no experiment while `storage_root` holds experiment folders:
        an empty registry there was lost or replaced, not the truth. `advice`: say what to do."""
        if self.experiment_names():
            return ""
        folders = experiment_folders(storage_root)
        if not folders:
            return ""
        found = f"the registry lists no experiment but {storage_root} holds some ({', '.join(folders)}, ...)"
        if not advice:
            return found
        return f"{found}: with the IOC stopped, put back a backup of it, or Create/CreateManual each again (files stay)"

    def _start_afresh(self, reason: str) -> sqlite3.Connection:
        """Keep the unreadable file aside (with its WAL) and open an empty registry in its place."""
        try:
            aside = keep_aside(self.path, SQLITE_COMPANIONS)
        except OSError as error:
            raise DMError(
                f"the registry {self.path} cannot be read ({reason}) nor kept aside ({error.strerror}): "
                "move it away by hand, then start again"
            ) from None
        self.problem = (
            f"registry {self.path.name} could not be read ({reason}): kept as {aside.name}, started empty; "
            "with the IOC stopped, put back a backup or recover the kept copy (sqlite3 .recover)"
        )
        log.warning("registry %s could not be read (%s): kept as %s", self.path, reason, aside)
        try:
            return self._open()
        except _Unreadable as error:  # a new file that cannot be read: the disk, not the data
            raise DMError(f"cannot open the registry {self.path}: {error}") from None

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it (also on a crash)."""
        with self._lock:
            try:
                with write_transaction(self._conn) as conn:
                    yield conn
            except sqlite3.Error as error:
                raise self._error("cannot write the registry", error) from error

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as error:
                raise self._error("cannot read the registry", error) from error

    # ------------------------------------------------------------------ experiments

    def put_experiment(self, experiment: Experiment, *, created: float | None = None) -> None:
        """Insert or update an experiment and add its users, in one transaction.

        An update keeps the creation time (the list order) and the users already
        there; `created` (seconds since the epoch) is for imports and tests.
        """
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO experiments (name, title, gup, esaf, start, "end", year_month,
                                            storage_directory, data_directory, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET
                       title = excluded.title, gup = excluded.gup, esaf = excluded.esaf,
                       start = excluded.start, "end" = excluded."end", year_month = excluded.year_month,
                       storage_directory = excluded.storage_directory,
                       data_directory = excluded.data_directory""",
                (
                    experiment.name,
                    experiment.title,
                    experiment.gup,
                    experiment.esaf,
                    _iso(experiment.start),
                    _iso(experiment.end),
                    experiment.year_month,
                    experiment.storage_directory,
                    experiment.data_directory,
                    time.time() if created is None else created,
                ),
            )
            self._insert_users(conn, experiment.name, experiment.users)

    def get_experiment(self, name: str) -> Experiment | None:
        """The experiment with its users (in the order they were added), or None."""
        with self._read() as conn:
            row = conn.execute(
                """SELECT name, title, gup, esaf, start, "end", year_month, storage_directory, data_directory
                   FROM experiments WHERE name = ?""",
                (name,),
            ).fetchone()
            if row is None:
                return None
            users = conn.execute(
                """SELECT username, name, email, institution, source FROM experiment_users
                   WHERE experiment = ? ORDER BY rowid""",
                (name,),
            ).fetchall()
        return Experiment(
            name=row[0],
            title=row[1],
            gup=row[2],
            esaf=row[3],
            start=_from_iso(row[4]),
            end=_from_iso(row[5]),
            year_month=row[6],
            storage_directory=row[7],
            data_directory=row[8],
            users=tuple(ExperimentUser(*user) for user in users),
        )

    def experiment_names(self) -> list[str]:
        """Every experiment's name, newest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT name FROM experiments ORDER BY created DESC, rowid DESC").fetchall()
        return [row[0] for row in rows]

    def has_experiment(self, name: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone() is not None

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Give `users` access to experiment `name`; return the usernames that did not have it."""
        with self.transaction() as conn:
            self._require(conn, name)
            return self._insert_users(conn, name, users)

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Take access from `usernames`; return those that had it."""
        removed = []
        with self.transaction() as conn:
            self._require(conn, name)
            for username in dict.fromkeys(usernames):
                cursor = conn.execute(
                    "DELETE FROM experiment_users WHERE experiment = ? AND username = ?", (name, username)
                )
                if cursor.rowcount:
                    removed.append(username)
        return removed

    def delete_experiment(self, name: str) -> bool:
        """Remove the experiment and its users; False if there was none."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM experiments WHERE name = ?", (name,)).rowcount > 0

    @staticmethod
    def _require(conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone() is None:
            raise InputError(f"no experiment named {name!r} in the registry")

    @staticmethod
    def _insert_users(conn: sqlite3.Connection, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        added = []
        for user in users:
            cursor = conn.execute(
                """INSERT INTO experiment_users (experiment, username, name, email, institution, source)
                   VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (experiment, username) DO NOTHING""",
                (name, user.username, user.name, user.email, user.institution, user.source),
            )
            if cursor.rowcount:
                added.append(user.username)
        return added

    # ------------------------------------------------------------------ ports.StateStore

    def selected(self) -> str:
        """The selected experiment's name, '' when none."""
        with self._read() as conn:
            row = conn.execute("SELECT name FROM selection WHERE id = 1").fetchone()
        return row[0] if row else ""

    def select(self, name: str) -> None:
        """Remember `name` as the selected experiment ('' clears the selection)."""
        with self.transaction() as conn:
            if name:
                conn.execute(
                    "INSERT INTO selection (id, name) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                    (name,),
                )
            else:
                conn.execute("DELETE FROM selection")

    def emailed(self, experiment: str) -> list[str]:
        """Usernames already sent the data-access message for `experiment`, in sending order."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT username FROM emailed WHERE experiment = ? ORDER BY sent, rowid", (experiment,)
            ).fetchall()
        return [row[0] for row in rows]

    def mark_emailed(self, experiment: str, usernames: Sequence[str]) -> None:
        with self.transaction() as conn:
            now = time.time()
            conn.executemany(
                "INSERT INTO emailed (experiment, username, sent) VALUES (?, ?, ?) "
                "ON CONFLICT (experiment, username) DO NOTHING",
                [(experiment, username, now) for username in usernames],
            )

    def rules(self, experiment: str) -> dict[str, str]:
        """Globus access rule ids of `experiment`, by username."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT username, rule_id FROM globus_rules WHERE experiment = ? ORDER BY rowid", (experiment,)
            ).fetchall()
        return dict(rows)

    def record_rules(self, experiment: str, rules: Mapping[str, str]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO globus_rules (experiment, username, rule_id) VALUES (?, ?, ?) "
                "ON CONFLICT (experiment, username) DO UPDATE SET rule_id = excluded.rule_id",
                [(experiment, username, rule_id) for username, rule_id in rules.items()],
            )

    def forget_rules(self, experiment: str, usernames: Sequence[str]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "DELETE FROM globus_rules WHERE experiment = ? AND username = ?",
                [(experiment, username) for username in usernames],
            )

    def proposal(self, experiment: str) -> Beamtime | None:
        """The proposal kept for `experiment`; None when none was (or it cannot be read: logged)."""
        with self._read() as conn:
            row = conn.execute("SELECT proposal FROM proposals WHERE experiment = ?", (experiment,)).fetchone()
        if row is None:
            return None
        try:
            return proposal_from_json(row[0])
        except (ValueError, TypeError, KeyError) as error:
            log.warning("registry: the proposal kept for %s cannot be read (%s); using the experiment record",
                        experiment, error)  # fmt: skip
            return None

    def keep_proposal(self, experiment: str, proposal: Beamtime) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO proposals (experiment, proposal) VALUES (?, ?) "
                "ON CONFLICT (experiment) DO UPDATE SET proposal = excluded.proposal",
                (experiment, proposal_json(proposal)),
            )

    def followed(self) -> str:
        with self._read() as conn:
            row = conn.execute("SELECT beamtime FROM followed WHERE id = 1").fetchone()
        return row[0] if row else ""

    def mark_followed(self, key: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO followed (id, beamtime) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET beamtime = excluded.beamtime",
                (key,),
            )

    def forget_experiment(self, experiment: str) -> None:
        """Drop the IOC's memory of `experiment`: e-mailed users, rule ids, the selection if it is the one.

        The experiment row itself belongs to the DM backend (`delete_experiment`).
        """
        with self.transaction() as conn:
            conn.execute("DELETE FROM emailed WHERE experiment = ?", (experiment,))
            conn.execute("DELETE FROM globus_rules WHERE experiment = ?", (experiment,))
            conn.execute("DELETE FROM proposals WHERE experiment = ?", (experiment,))
            conn.execute("DELETE FROM selection WHERE name = ?", (experiment,))
