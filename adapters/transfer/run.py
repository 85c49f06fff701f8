"""`Run`: one transfer (a start or a resume): its thread, which polls the source folders (`Tracker`) and feeds
a pool of copy workers, commits what they copied to the ledger, and shows the progress."""

from __future__ import annotations

import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ...ioc.domain.errors import DiskFull
from ...ioc.domain.ports import RecentRate, TransferProgress, TransferState
from .bytecopy import Written
from .copying import COPIED, FAILED, NO_STORAGE, copy_files, remove_part_files
from .files import Job, Source, not_followed
from .folders import open_folder, shown
from .storage import Storage, StorageUnavailable
from .tracker import Tracker

if TYPE_CHECKING:
    from .local import LocalTransfer

log = logging.getLogger(__name__)


class Run:
    """One transfer (a start or a resume): its thread, the copy workers it feeds, its progress."""

    CHUNK_FILES = 64  # files per worker task (one syncfs for them all)
    CHUNK_BYTES = 16 * 1024 * 1024  # a chunk's data; a larger file is a chunk of its own
    CHUNKS_PER_WORKER = 2  # chunks in flight per worker
    PUBLISH_SECONDS = 0.5  # the progress is shown at least this often, also during a long copy

    def __init__(self, owner: LocalTransfer, experiment: str, sources: Mapping[str, str], once: bool, storage: Storage):
        self.owner = owner
        self.experiment = experiment
        self.once = once
        self.storage = storage
        self.storage_error = ""  # the storage is not there as Create made it: nothing is copied meanwhile
        self.cleaned = False  # temporary files a killed run left under the destinations are removed
        self.tracker = Tracker(experiment, sources, once, owner, self.record_sent)
        self.sources = self.tracker.sources
        self.cancel = threading.Event()
        self.finished = False
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight = 0
        self.copied_files = 0
        self.copied_bytes = 0
        self.copying: set[Written] = set()  # the bytes written so far by each chunk the workers copy now
        self.written_bytes = 0  # by the chunks that ended, whatever became of their copies: the rate's count
        self.last_file = ""
        self.ledger_error = ""
        self.ledger_full = False  # state_dir has no room for the ledger (said until a commit writes)
        self.engine_error = ""
        self.synced_dirs: set[str] = set()
        self.started = time.monotonic()
        self.rate = RecentRate()
        self.rate.add(0, self.started)
        self.poll_seconds = 0.0  # the last poll's duration, and how many polls so far (benchmarks, diagnostics)
        self.first_poll_seconds = 0.0
        self.polls = 0
        self.thread = threading.Thread(target=self._main, name=f"transfer-{experiment}", daemon=True)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.finished

    def wake(self) -> None:
        self.results.put(None)

    # ---- main loop

    def _main(self) -> None:
        workers = ThreadPoolExecutor(max_workers=self.owner.workers, thread_name_prefix="transfer-copy")
        try:
            next_poll = 0.0
            while not self.cancel.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_poll:
                        started = time.perf_counter()
                        self._poll(now)
                        self.poll_seconds = time.perf_counter() - started
                        self.first_poll_seconds = self.first_poll_seconds or self.poll_seconds
                        self.polls += 1
                        next_poll = now + self.owner.poll_interval
                    self._submit(workers)
                    if self.owner.ledger.due():
                        self._commit()
                    if self.once and self._all_sent() and self._finish():
                        return
                    self.engine_error = ""
                    self._publish()
                    self._drain(min(self.PUBLISH_SECONDS, max(0.0, next_poll - time.monotonic())))
                except Exception as error:
                    log.exception("transfer of %s: unexpected failure; continuing", self.experiment)
                    self.engine_error = f"transfer engine failed: {error}"
                    self._publish()
                    self.cancel.wait(self.owner.poll_interval)
        finally:
            workers.shutdown(wait=True, cancel_futures=True)
            self._drain(0.0)
            try:
                self._commit()
            except Exception:
                log.exception("transfer of %s: cannot write the ledger on exit", self.experiment)

    def _check_storage(self) -> None:
        """Is the storage the one Create made, with its destination folders? Once it is, remove the
        temporary files a killed run left there."""
        try:
            self.storage.check([source.dest for source in self.sources])
            if not self.cleaned:
                for source in self.sources:
                    fd = self.storage.open_dest(source.dest)
                    try:
                        removed = remove_part_files(fd)
                    finally:
                        os.close(fd)
                    if removed:
                        log.info("removed %s unfinished copies under %s", removed, source.dest)
                self.cleaned = True
        except StorageUnavailable as error:
            if str(error) != self.storage_error:
                log.error("transfer of %s: %s", self.experiment, error)
            self.storage_error = str(error)
            return
        if self.storage_error:
            log.info("transfer of %s: the storage %s is back", self.experiment, self.storage.path)
        self.storage_error = ""

    def _poll(self, now: float) -> None:
        self._check_storage()
        self.tracker.poll(now, storage_there=not self.storage_error)

    def _submit(self, workers: ThreadPoolExecutor) -> None:
        """Hand ready files to the workers in chunks: one task, one flush and one result per chunk.

        A chunk takes up to CHUNK_FILES files of one source and CHUNK_BYTES
        (a larger file goes alone, with its own fsync), and no more than a fair
        share of what is ready, so that a few files still spread over the workers.
        """
        if self.storage_error:
            return  # the files wait, queued, for the storage
        limit = self.owner.workers * self.CHUNKS_PER_WORKER
        ready = self.tracker.ready
        while ready and self.in_flight < limit and not self.cancel.is_set():
            share = min(self.CHUNK_FILES, -(-len(ready) // self.owner.workers))
            job = ready.popleft()
            chunk, size = [job], job.size
            while (
                ready
                and len(chunk) < share
                and ready[0].source is job.source
                and size + ready[0].size <= self.CHUNK_BYTES
            ):
                chunk.append(ready.popleft())
                size += chunk[-1].size
            written = Written()
            self.copying.add(written)
            workers.submit(self._copy, chunk, written)
            self.in_flight += 1

    def _copy(self, jobs: list[Job], written: Written) -> None:
        """In a worker thread: copy a chunk of files (all of one source), counting the bytes in `written`;
        hand the outcomes (and the checksums the copies were verified against) to the engine thread."""
        source = jobs[0].source
        checksums: dict[str, str] = {}
        try:
            outcomes = copy_files(
                source.root,
                source.dest,
                [(job.rel, (job.size, job.mtime_ns)) for job in jobs],
                checksum=self.owner.checksum,
                cancel=self.cancel,
                open_source=functools.partial(open_folder, source.root, self.owner.source_top),
                open_dest=functools.partial(self.storage.open_dest, source.dest),
                written=written,
                checksums=checksums,
            )
        except Exception as error:
            log.exception("copying to %s failed unexpectedly", source.dest)
            outcomes = [
                (FAILED, f"cannot copy {shown(os.path.join(source.root, job.rel))} to {source.dest}: {error}")
                for job in jobs
            ]
        self.results.put((jobs, outcomes, written, checksums))

    def _drain(self, timeout: float) -> None:
        """Take copy outcomes, waiting up to `timeout` for the first."""
        try:
            result = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
            while True:
                if result is not None:
                    jobs, outcomes, written, checksums = result
                    self.in_flight -= 1
                    self.copying.discard(written)
                    self.written_bytes += written.bytes
                    for job, (outcome, reason) in zip(jobs, outcomes, strict=True):
                        self._settle(job, outcome, reason, checksums.get(job.rel, ""))
                result = self.results.get_nowait()
        except queue.Empty:
            pass

    def _settle(self, job: Job, outcome: str, reason: str, checksum: str = "") -> None:
        """Take a copy's outcome; a file copied goes into the ledger with its checksum (dm.checksum)."""
        if outcome == COPIED:
            self.copied_files += 1
            self.copied_bytes += job.size
            self.last_file = os.path.join(job.source.root, job.rel)
            self.record_sent(job.source, job.rel, job.size, job.mtime_ns, checksum)
        elif outcome == NO_STORAGE:
            self.storage_error = reason
        self.tracker.settle(job, outcome, reason)

    def record_sent(self, source: Source, rel: str, size: int, mtime_ns: int, checksum: str) -> None:
        """A file whole at its destination (copied, or found there): into the ledger's next commit.

        Its data was made durable before its rename (copy_files); the rename may not be yet (a kill -9
        before the ledger commit): the commit makes it durable first (its folder is fsync'ed).
        """
        self.owner.ledger.add(source.root, rel, size, mtime_ns, source.dest, checksum)
        self.synced_dirs.add(os.path.dirname(os.path.join(source.dest, rel)))

    def _commit(self) -> None:
        """Make the renames durable (fsync their folders), then commit the ledger batch.

        The copies' data was made durable before their rename (copy_files), so
        once their folders are fsync'ed every row of the batch names a file that
        survives a power failure. A power failure before this point may undo a
        rename: that file is then absent (its temporary file is removed at
        resume) and sent again; or the rename survived and the file is whole.
        """
        for folder in self.synced_dirs:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                log.warning("cannot fsync folder %s", folder, exc_info=True)
        self.synced_dirs.clear()
        try:
            committed = self.owner.ledger.commit()
        except DiskFull as error:  # state_dir full: no bug; the rows stay buffered until there is room
            self._ledger_failed(error)
        except sqlite3.Error as error:
            log.exception("cannot write the transfer ledger %s", self.owner.ledger.path)
            self.ledger_error = f"cannot write the transfer ledger {self.owner.ledger.path}: {error}"
        else:
            if committed or not self.ledger_full:  # an empty commit says nothing of the room
                if self.ledger_error:
                    log.info("transfer of %s: the transfer ledger is written again", self.experiment)
                self.ledger_error, self.ledger_full = "", False

    def _ledger_failed(self, error: DiskFull) -> None:
        """No space left for the ledger: shown as the run's error, logged once (one line) until it changes."""
        message = f"cannot write the transfer ledger {self.owner.ledger.path}: {error}"
        if message != self.ledger_error:
            log.error("transfer of %s: %s; the files sent meanwhile are recorded once there is room",
                      self.experiment, message)  # fmt: skip
        self.ledger_error, self.ledger_full = message, True

    def _all_sent(self) -> bool:
        return self.tracker.all_sent() and not self.in_flight

    def _finish(self) -> bool:
        """An upload has sent everything: record it, clear the definition, show the summary. False, to
        try again later, while the ledger cannot be written (state_dir full)."""
        self._commit()
        if self.owner.ledger.buffered():
            return False
        try:
            self.owner.ledger.clear_running()
        except DiskFull as error:
            self._ledger_failed(error)
            return False
        elapsed = time.monotonic() - self.started
        summary = (
            f"upload of {self.experiment} finished: {self.copied_files} files, "
            f"{self.copied_bytes / 1e6:.1f} MB in {elapsed:.1f} s"
        )
        already = self.tracker.done_files - self.copied_files
        if already > 0:
            summary += f" ({already} already there)"
        summary += not_followed(self.sources)
        log.info("%s", summary)
        self.owner.show_progress(self, self.snapshot(TransferState.STOPPED, summary, rate=0.0))
        self.finished = True
        return True

    # ---- progress

    def _publish(self) -> None:
        problems = [self.storage_error] if self.storage_error else []
        problems += [s.error for s in self.sources if s.error]
        problems += [error for error in (self.engine_error, self.ledger_error) if error]
        problems += list(self.tracker.errors.values())[::-1]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            self.owner.show_progress(self, self.snapshot(TransferState.ERROR, problems[0] + more))
        else:
            self.owner.show_progress(self, self.snapshot(TransferState.RUNNING, ""))

    def snapshot(self, state: TransferState, message: str, rate: float | None = None) -> TransferProgress:
        """The progress now, by bytes: the files sent and what is written of those being copied, of the
        files sent or ready to send (a file still being written counts once it has settled); the rate
        over the last few seconds (only the engine's thread measures it: others pass `rate`)."""
        copying = sum(written.bytes for written in tuple(self.copying))  # a copy of the set: stop() reads it too
        if rate is None:
            rate = self.rate.add(self.written_bytes + copying, time.monotonic())
        return TransferProgress(
            state=state,
            files_done=self.tracker.done_files,
            files_total=self.tracker.done_files + self.tracker.waiting_files(),
            bytes_done=float(self.tracker.done_bytes + copying),
            bytes_total=float(self.tracker.ready_bytes),
            rate_mb_s=rate,
            last_file=shown(self.last_file),
            message=shown(message),
        )

    def summary(self) -> str:
        return f"{self.copied_files} files, {self.copied_bytes / 1e6:.1f} MB sent{not_followed(self.sources)}"
