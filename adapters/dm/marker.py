"""The storage's identity: Create writes a marker, `{storage}/.dmagic-storage`, naming the experiment with a
random id.

The transfer engine (adapters/transfer/) records that id at DaqStart and checks it through the storage
folder's file descriptor before each batch of copies, so it never writes into a folder Create did not
make: a storage deleted by hand, re-made by someone else, or hidden by an unmounted disk (its mount point
is an empty folder on another disk) has no marker, or another id. A marker, not the device id: a device
id cannot tell a folder re-made on the same disk (`rm -rf`, then `mkdir`), and inode numbers are reused;
and a marker survives a storage moved to a new disk with its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ...ioc.domain.errors import DMError
from ..transfer.folders import FOLDER_FLAGS
from .tree import disk_error

STORAGE_MARKER = ".dmagic-storage"  # in an experiment's storage folder: {"experiment", "id", "created"}


def read_storage_marker(folder_fd: int) -> dict[str, str]:
    """The marker of the storage folder open as `folder_fd`: {"experiment": ..., "id": ...}.

    Raises FileNotFoundError when there is none, ValueError when it is not a
    marker, OSError when it cannot be read (a symlink in its place included).
    """
    fd = os.open(STORAGE_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        marker = json.loads(data)
        experiment, ident = marker["experiment"], marker["id"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{STORAGE_MARKER} is not a storage marker") from None
    if not isinstance(experiment, str) or not isinstance(ident, str) or not ident:
        raise ValueError(f"{STORAGE_MARKER} is not a storage marker")
    return {"experiment": experiment, "id": ident}


def write_storage_marker(storage: Path, experiment: str, *, folder_fd: int | None = None) -> str:
    """Mark `storage` as the storage Create made for `experiment`; return the marker's id.

    `folder_fd`: the storage folder, already open without following links (Create's): the marker is
    written through it, the path never opened again (it names the folder in messages); without it the
    folder is opened here, never through a symlink. An existing marker of the same experiment is kept
    (Create is idempotent); one of another experiment, or one that cannot be read, is refused.
    """
    if folder_fd is not None:
        return _write_marker(folder_fd, storage, experiment)
    try:
        folder = os.open(storage, FOLDER_FLAGS)
    except OSError as error:
        raise disk_error("mark the storage folder", storage, error) from error
    try:
        return _write_marker(folder, storage, experiment)
    finally:
        os.close(folder)


def _write_marker(folder: int, storage: Path, experiment: str) -> str:
    """`write_storage_marker` in the folder open as `folder`: written aside (O_NOFOLLOW), renamed in it."""
    try:
        marker = read_storage_marker(folder)
    except FileNotFoundError:
        marker = None
    except (OSError, ValueError) as error:
        why = error.strerror if isinstance(error, OSError) else str(error)
        raise DMError(
            f"storage {storage}: its {STORAGE_MARKER} cannot be read ({why}); "
            "nothing changed: find out what wrote it, remove it, and run Create again"
        ) from None
    if marker is not None:
        if marker["experiment"] != experiment:
            raise DMError(
                f"storage {storage} belongs to experiment {marker['experiment']!r} (says its {STORAGE_MARKER}); "
                f"not used for {experiment}"
            )
        return marker["id"]
    ident = uuid.uuid4().hex
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = json.dumps({"experiment": experiment, "id": ident, "created": created}).encode()
    part = f"{STORAGE_MARKER}.part-{ident[:8]}"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                     dir_fd=folder)  # fmt: skip
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, STORAGE_MARKER, src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=folder)
        raise disk_error("write", storage / STORAGE_MARKER, error) from error
    return ident
