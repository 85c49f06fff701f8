"""The registry's SQLite file: read whole before it is used, migrated, kept aside when it cannot be read.

A file that cannot be read is kept aside (`registry.sqlite.corrupt-<time>`) and an empty registry
started in its place, with a sentence for Status saying so. A file that cannot be opened for another
reason (permissions, a newer schema) is refused with a DMError, never set aside.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from ...ioc.domain.errors import DiskFull, DMError
from ...ioc.statefiles import disk_full, keep_aside, private_file
from .schema import migrate

log = logging.getLogger(__name__)

SQLITE_COMPANIONS = ("-wal", "-shm")  # files beside the registry that hold part of it
_UNREADABLE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _Unreadable(Exception):
    """The registry file is there but is no readable SQLite database (garbage, truncated, corrupt pages)."""


def open_registry(path: Path) -> tuple[sqlite3.Connection, str]:
    """A connection to the registry at `path`, its schema current, and '' or, when the file found could not
    be read and was kept aside (an empty registry started in its place), a sentence saying so."""
    try:
        return _connect(path), ""
    except _Unreadable as error:
        return _start_afresh(path, str(error))


def registry_error(path: Path, doing: str, error: OSError | sqlite3.Error) -> DMError:
    """`error` in a sentence for Status; a DiskFull ("state_dir full: ...") when no space was left."""
    message = f"{doing} {path}: {error}"
    return DiskFull(f"state_dir full: {message}") if disk_full(error) else DMError(message)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_readable(path)
        private_file(path)  # a new one 0600 before SQLite writes it: its -wal and -shm follow
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
    except (OSError, sqlite3.Error) as error:
        raise registry_error(path, "cannot open the registry", error) from error
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        # Commits are rare (one per command): pay the fsync for durability.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path)
    except sqlite3.Error as error:
        conn.close()
        if error.sqlite_errorcode & 0xFF in _UNREADABLE:
            raise _Unreadable(str(error)) from None
        raise registry_error(path, "cannot open the registry", error) from error
    except BaseException:
        conn.close()
        raise
    return conn


def _start_afresh(path: Path, reason: str) -> tuple[sqlite3.Connection, str]:
    """Keep the unreadable file aside (with its WAL) and open an empty registry in its place."""
    try:
        aside = keep_aside(path, SQLITE_COMPANIONS)
    except OSError as error:
        raise DMError(
            f"the registry {path} cannot be read ({reason}) nor kept aside ({error.strerror}): "
            "move it away by hand, then start again"
        ) from None
    problem = (
        f"registry {path.name} could not be read ({reason}): kept as {aside.name}, started empty; "
        "with the IOC stopped, put back a backup or recover the kept copy (sqlite3 .recover)"
    )
    log.warning("registry %s could not be read (%s): kept as %s", path, reason, aside)
    try:
        return _connect(path), problem
    except _Unreadable as error:  # a new file that cannot be read: the disk, not the data
        raise DMError(f"cannot open the registry {path}: {error}") from None


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
