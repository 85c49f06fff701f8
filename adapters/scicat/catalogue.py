"""`ScicatCatalogue`, the `ports.Catalogue`: datasets queued in state_dir, sent to SciCat by a thread of its own.

The thread sends with back-off while SciCat refuses or is down, after a restart too; a queue that cannot be
read stops no thread: it is said once and tried again with back-off. Never twice: the pid is chosen by the
IOC once; a dataset SciCat already has (looked up before creating) is not created again; after a restart or
a lost answer SciCat's count of the dataset's origdatablocks (one small answer, however many files they
list) says whether the one posted last got there. The origdatablocks are read from the queue one at a time,
in order: a dataset of a million files is never in memory at once.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from ...ioc.domain.catalog_ports import CatalogStatus, Dataset
from ...ioc.domain.catalog_values import source_host_problem
from ...ioc.domain.errors import CatalogError
from ...ioc.statefiles import disk_full
from .bodies import MAX_BLOCK_BYTES, MAX_BLOCK_FILES, Datablocks, scicat_dataset
from .client import Forbidden, ScicatClient, Unreachable
from .queue import STAGES, CatalogQueue, Queued, StagedDataset

log = logging.getLogger(__name__)


class ScicatCatalogue:
    """`ports.Catalogue`: a queue in state_dir, sent to SciCat by a thread of its own with back-off."""

    FIRST_RETRY = 2.0  # seconds; doubled after each failed round up to LAST_RETRY
    LAST_RETRY = 300.0
    BLOCK_FILES, BLOCK_BYTES = MAX_BLOCK_FILES, MAX_BLOCK_BYTES  # an origdatablock's files, at most; its JSON, about

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

    def stage(self, dataset: Dataset) -> StagedDataset:
        """Start putting `dataset` into the queue, its files so far with it; sent once committed."""
        staging = self.queue.stage(dataset.pid, scicat_dataset(dataset, self.source_host))
        staged = StagedDataset(staging, Datablocks(self.BLOCK_FILES, self.BLOCK_BYTES), self._wake_sender)
        try:
            staged.add(dataset.files)
        except BaseException:
            staged.drop()
            raise
        return staged

    def submit(self, dataset: Dataset) -> None:
        """Queue `dataset` and its files, all of it (or, refused, none), and have it sent."""
        staged = self.stage(dataset)
        try:
            staged.commit()
        except BaseException:
            staged.drop()
            raise

    def _wake_sender(self) -> None:
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
            return CatalogStatus(self._pending, "", False, self.queue.unread(error))
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
            if taken < blocks and not created:
                taken = self._taken(pid, taken, blocks)
            for number in range(taken, blocks):
                self.client.create_datablock(pid, self.queue.block(pid, number))
                self.queue.note_blocks(pid, number + 1)
        except Forbidden as refused:
            raise CatalogError(_lacking(refused, self.client.user, queued.dataset)) from None
        self.queue.done(pid)
        log.info("catalogue: dataset %s sent to SciCat (%d origdatablocks)", pid, blocks)

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
                self._failed(self.queue.unread(error), error)
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
