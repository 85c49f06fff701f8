"""The files a Globus job's tasks moved into storage, as the IOC finds them there: what `sent_since` lists."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ...ioc.domain.ports import SentFile
from ..transfer.folders import Folders, SymlinkRefused, shown
from .client import Clients

log = logging.getLogger(__name__)


def files_sent(
    clients: Clients, tasks: Sequence[tuple[str, float]], storage_root: str, prefix: str
) -> tuple[list[SentFile], int]:
    """The files the ended `tasks` ((task id, when it ended)) moved under `prefix` (a path on the guest
    collection), as they are in `storage_root` now, each sent when its task ended; and how many of them are
    gone (or not regular files). Raises what the Globus calls raise."""
    folders = _open_storage_root(storage_root)
    sent: list[SentFile] = []
    missing = 0
    try:
        for task_id, ended in tasks:
            for item in clients.transfer().paginated.task_successful_transfers(task_id).items():
                destination = str(item.get("destination_path") or "")
                if not destination.startswith(prefix):
                    continue
                found = _stat(folders, storage_root, destination, ended)
                missing += found is None
                if found is not None:
                    sent.append(found)
    finally:
        if folders is not None:
            folders.close()
    return sent, missing


def ended_at(text: Any) -> float:
    """A task's `completion_time` (ISO 8601) in seconds since the epoch; now when Globus gives none."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _stat(folders: Folders | None, storage_root: str, destination: str, sent_at: float) -> SentFile | None:
    """A file Globus put at `destination` (a path on the guest collection), as it is in storage now:
    reached from storage_root (`folders`) one name at a time, never through a symbolic link; None when
    gone, or not a regular file (a link planted in the storage would put an outside file's size and
    time in the record: skipped with a warning)."""
    relative = os.path.normpath(destination.lstrip("/"))
    path = os.path.join(storage_root, relative)
    if folders is None or relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        return None
    folder, _, name = relative.rpartition(os.sep)
    try:
        status = os.stat(name, dir_fd=folders.get(folder), follow_symlinks=False)
    except SymlinkRefused as error:
        log.warning("Globus transfer: %s is reached through a symbolic link (%s): not in the dataset",
                    shown(path), shown(os.fsdecode(error.filename)))  # fmt: skip
        return None
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        log.warning("Globus transfer: %s is not a regular file (a symbolic link?): not in the dataset", shown(path))
        return None
    return SentFile(path=path, size=status.st_size, mtime=status.st_mtime, sent_at=sent_at)


def _open_storage_root(storage_root: str) -> Folders | None:
    """storage_root's folders, to reach the files sent without following a link; None when it cannot be
    opened (its disk not mounted): every file sent is then gone. A symlink at storage_root is the admin's."""
    try:
        return Folders(storage_root, os.open(storage_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), make=False)
    except OSError as error:
        log.warning("Globus transfer: cannot open dm.storage_root %s: %s", storage_root, error.strerror)
        return None
