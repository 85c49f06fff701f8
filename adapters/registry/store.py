"""`Registry`: experiments, users, selection, e-mailed users, Globus rule ids, kept proposals, read and written.

Every operation is one transaction, so a crash between two writes never leaves half an experiment
behind. Methods block (disk): the IOC calls them off the event loop, possibly from different threads
one at a time, so one connection is shared under a lock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ...ioc.domain.beamtime import Beamtime
from ...ioc.domain.errors import InputError
from ...ioc.domain.esaf import Esaf
from ...ioc.domain.experiment import Experiment, ExperimentUser
from ...ioc.domain.people import Person
from ...ioc.domain.proposal import Proposal
from ...ioc.statefiles import write_transaction
from .file import open_registry, registry_error

log = logging.getLogger(__name__)


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
    """A beamtime as JSON, flat as the registry has always kept it (its proposal's and its ESAF's values
    beside its own): times in ISO 8601, people as objects."""
    fields = {
        "gup": proposal.gup,
        "title": proposal.title,
        "start": _iso(proposal.start),
        "end": _iso(proposal.end),
        "people": [dataclasses.asdict(person) for person in proposal.people],
        "proposal_type": proposal.proposal_type,
        "esaf": proposal.esaf,
        "esaf_doi": proposal.esaf_doi,
        "proprietary": proposal.proprietary,
        "mail_in": proposal.mail_in,
        "esaf_people": [dataclasses.asdict(person) for person in proposal.esaf_people],
        "warnings": list(proposal.warnings),
    }
    return json.dumps(fields, ensure_ascii=False)


def proposal_from_json(text: str) -> Beamtime:
    """A beamtime `proposal_json` wrote, or an older registry did (without the keys added since)."""
    fields = json.loads(text)
    people = {group: tuple(Person(**person) for person in fields.get(group, ())) for group in ("people", "esaf_people")}
    kept = Proposal(fields["gup"], fields.get("title", ""), people["people"], fields.get("proposal_type", ""),
                    fields.get("proprietary", False), fields.get("mail_in", False))  # fmt: skip
    esaf = Esaf(fields["esaf"], fields.get("esaf_doi", ""), people["esaf_people"]) if fields.get("esaf") else None
    start, end = datetime.fromisoformat(fields["start"]), datetime.fromisoformat(fields["end"])
    return Beamtime(kept, start, end, esaf, tuple(fields.get("warnings", ())))


class Registry:
    """Experiments, users, selection, e-mailed users and Globus rule ids in one SQLite file.

    A file that cannot be read is kept aside and an empty registry started in its place (`file`);
    `problem` then says so in a sentence for Status.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.RLock()
        # `problem`: set when the file found could not be read and was kept aside
        self._conn, self.problem = open_registry(self.path)

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

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it (also on a crash)."""
        with self._lock:
            try:
                with write_transaction(self._conn) as conn:
                    yield conn
            except sqlite3.Error as error:
                raise registry_error(self.path, "cannot write the registry", error) from error

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as error:
                raise registry_error(self.path, "cannot read the registry", error) from error

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
