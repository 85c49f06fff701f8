"""The registry's tables and their migrations: `MIGRATIONS[i]` takes the schema from version i to i + 1,
the version kept in `PRAGMA user_version`."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ...ioc.domain.errors import DMError
from ...ioc.statefiles import write_transaction

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
