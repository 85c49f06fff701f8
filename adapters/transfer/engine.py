"""The engine of one transfer: a thread that polls the source folders and feeds a pool of copy workers."""

from __future__ import annotations

import functools
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ...ioc.domain.model import DiskFull
from ...ioc.domain.ports import RecentRate, TransferProgress, TransferState
from .copying import COPIED, FAILED, NO_STORAGE, VANISHED, Written, copy_files, remove_part_files
from .files import DONE, PENDING, QUEUED, File, Job, Source, not_followed
from .folders import SymlinkRefused, open_folder, shown
from .scan import Tree
from .storage import Storage, StorageUnavailable

if TYPE_CHECKING:
    from .local import LocalTransfer

log = logging.getLogger(__name__)


class Run:
    """One transfer (a start or a resume): the engine thread and its state."""

    AUDIT_PER_POLL = 500  # already-sent files re-stat'ed per poll
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
        self.sources = [Source(root, dest) for root, dest in sources.items()]
        self.cancel = threading.Event()
        self.finished = False
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.ready: deque[Job] = deque()
        self.in_flight = 0
        self.errors: dict[tuple[str, str], str] = {}
        self.done_files = 0
        self.done_bytes = 0
        self.ready_bytes = 0  # of the files sent or ready to send (every state but PENDING): Percent's total
        self.copied_files = 0
        self.copied_bytes = 0
        self.copying: set[Written] = set()  # the bytes written so far by each chunk the workers copy now
        self.written_bytes = 0  # by the chunks that ended, whatever became of their copies: the rate's count
        self.last_file = ""
        self.ledger_error = ""
        self.ledger_full = False  # state_dir has no room for the ledger (said until a commit writes)
        self.engine_error = ""
        self.first_pass_done = False
        self.synced_dirs: set[str] = set()
        self.started = time.monotonic()
        self.rate = RecentRate()
        self.rate.add(0, self.started)
        self.poll_seconds = 0.0
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
            next_poll, prepared = 0.0, False
            while not self.cancel.is_set():
                try:
                    if not prepared:
                        self._prepare()
                        prepared = True
                    now = time.monotonic()
                    if now >= next_poll:
                        started = time.perf_counter()
                        self._poll(now)
                        self.poll_seconds = time.perf_counter() - started
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

    def _prepare(self) -> None:
        """Load what the ledger knows."""
        for source in self.sources:
            source.sent = self.owner.ledger.sent(source.root, source.dest)

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
        wall = time.time()
        self._check_storage()
        for source in self.sources:
            if not self.once or not self.first_pass_done:
                self._scan(source, now, wall)
            self._check_pending(source, now)
            self._retry_failed(source, now)
            if not self.once:
                self._audit(source, now, wall)
        self.first_pass_done = True

    def _scan(self, source: Source, now: float, wall: float) -> None:
        beneath = self.owner.source_top
        if source.tree is None:
            if not os.path.lexists(source.root):
                return  # not there yet: no error, it is picked up when it appears
            source.tree = Tree(source.root, beneath)
            log.info("transfer of %s: scanning %s", self.experiment, source.root)
        try:
            found, removed = source.tree.poll()
        except FileNotFoundError:
            source.error = f"source folder {shown(source.root)} vanished"
            source.tree = Tree(source.root, beneath)  # a full rescan when it is back
            return
        except SymlinkRefused as error:
            link = shown(error.filename)
            source.error = f"source folder {shown(source.root)} refused: {link} is a symbolic link, not followed"
            source.tree = Tree(source.root, beneath)
            return
        except OSError as error:
            source.error = f"cannot read source folder {shown(source.root)}: {error.strerror or error}"
            return
        except ValueError:  # recorded before dm.data_top_dir changed
            source.error = f"source folder {shown(source.root)} is not inside dm.data_top_dir {beneath}: not read"
            return
        source.error = next(iter(source.tree.problems.values()), "")
        for rel in removed:
            self._forget(source, rel)
        for rel, size, mtime_ns in found:
            self._observe(source, rel, size, mtime_ns, now, wall)

    def _observe(self, source: Source, rel: str, size: int, mtime_ns: int, now: float, wall: float) -> None:
        """A file seen by the scan or the audit: new, changed, or as before."""
        file = source.files.get(rel)
        if file is None:
            if not rel.isprintable():
                self._warn_odd_name(source, rel)
            if source.sent.pop(rel, None) == (size, mtime_ns):
                sent = self._still_at_destination(source, rel)
            else:
                sent = self._at_destination(source, rel, size, mtime_ns)
            if sent:
                file = source.files[rel] = File(size, mtime_ns)
                self._set_state(file, DONE)
                self.done_files += 1
                self.done_bytes += size
                self._audit_later(source, rel, file)
                return
            file = source.files[rel] = File(size, mtime_ns)
        elif (file.size, file.mtime_ns) == (size, mtime_ns) or file.state == QUEUED:
            return  # a queued file is checked again by its copy
        else:
            self._leave_state(source, rel, file)
            file.size, file.mtime_ns = size, mtime_ns
        file.state = PENDING
        # An mtime already older than settle_time counts toward settling.
        file.stable_since = now - min(max(wall - mtime_ns / 1e9, 0.0), self.owner.settle_time)
        file.seen_at = now
        source.pending.add(rel)

    def _warn_odd_name(self, source: Source, rel: str) -> None:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            log.warning(
                "transfer of %s: the name of %s is not UTF-8: sent under the same bytes (shown here as \\xNN)",
                self.experiment,
                shown(os.path.join(source.root, rel)),
            )

    def _still_at_destination(self, source: Source, rel: str) -> bool:
        """A file the ledger lists as sent: whether its copy is still there (one stat, at its first sighting).

        A copy deleted behind the ledger's back (storage removed by hand, an
        experiment deleted and re-created without `forget`) is sent again,
        instead of being counted as sent while storage lacks it. While the
        storage itself is not there, the ledger is trusted.
        """
        if self.storage_error:
            return True
        try:
            os.stat(os.path.join(source.dest, rel))
        except (FileNotFoundError, NotADirectoryError):
            log.info(
                "transfer of %s: %s was sent but is missing from %s; sending it again",
                self.experiment,
                shown(rel),
                source.dest,
            )
            return False
        except OSError:
            pass  # cannot tell: trust the ledger
        return True

    def _at_destination(self, source: Source, rel: str, size: int, mtime_ns: int) -> bool:
        """The destination already holds this version (sent before its ledger row was committed)."""
        try:
            st = os.stat(os.path.join(source.dest, rel))
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
        # Its data was made durable before its rename (copy_files); the rename may not be
        # yet (a kill -9 before the ledger commit): the commit makes it durable first.
        self.synced_dirs.add(os.path.dirname(os.path.join(source.dest, rel)))
        self.owner.ledger.add(source.root, rel, size, mtime_ns, source.dest)
        return True

    def _leave_state(self, source: Source, rel: str, file: File) -> None:
        """`file` changed or went: it is no longer sent nor ready to send (PENDING)."""
        if file.state == DONE:
            self.done_files -= 1
            self.done_bytes -= file.size
        self._set_state(file, PENDING)
        source.pending.discard(rel)
        source.failed.discard(rel)
        self.errors.pop((source.root, rel), None)

    def _forget(self, source: Source, rel: str) -> None:
        file = source.files.pop(rel, None)
        if file is not None:
            self._leave_state(source, rel, file)

    def _check_pending(self, source: Source, now: float) -> None:
        for rel in list(source.pending):
            file = source.files[rel]
            if file.seen_at == now:  # stat'ed by this poll's scan: settled if settle_time allows
                if now - file.stable_since >= self.owner.settle_time:
                    source.pending.discard(rel)
                    self._queue(source, rel, file)
                continue
            try:
                st = os.stat(os.path.join(source.root, rel), follow_symlinks=False)
            except FileNotFoundError:
                self._forget(source, rel)
                continue
            except OSError as error:
                self._fail(source, rel, file, f"cannot read {shown(os.path.join(source.root, rel))}: {error.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._forget(source, rel)  # a symlink or special file now: the scan says so
                continue
            if (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
                file.size, file.mtime_ns, file.stable_since = st.st_size, st.st_mtime_ns, now
            elif now - file.stable_since >= self.owner.settle_time:
                source.pending.discard(rel)
                self._queue(source, rel, file)

    def _retry_failed(self, source: Source, now: float) -> None:
        for rel in [rel for rel in source.failed if source.files[rel].retry_at <= now]:
            source.failed.discard(rel)
            self._queue(source, rel, source.files[rel])

    def _audit(self, source: Source, now: float, wall: float) -> None:
        """Re-stat a bounded number of sent files: catches files rewritten in place."""
        for _ in range(min(self.AUDIT_PER_POLL, len(source.audit))):
            rel = source.audit.popleft()
            file = source.files.get(rel)
            if file is None or file.state != DONE:
                if file is not None:
                    file.audited = False
                continue
            source.audit.append(rel)
            try:
                st = os.stat(os.path.join(source.root, rel), follow_symlinks=False)
            except OSError:
                continue  # a removal shows in the scan
            self._observe(source, rel, st.st_size, st.st_mtime_ns, now, wall)

    def _audit_later(self, source: Source, rel: str, file: File) -> None:
        if not self.once and not file.audited:
            file.audited = True
            source.audit.append(rel)

    def _set_state(self, file: File, state: str) -> None:
        """Change `file`'s state, keeping `ready_bytes` (the files that are not PENDING) right."""
        self.ready_bytes += ((state != PENDING) - (file.state != PENDING)) * file.size
        file.state = state

    def _queue(self, source: Source, rel: str, file: File) -> None:
        self._set_state(file, QUEUED)
        self.ready.append(Job(source, rel, file.size, file.mtime_ns))

    def _submit(self, workers: ThreadPoolExecutor) -> None:
        """Hand ready files to the workers in chunks: one task, one flush and one result per chunk.

        A chunk takes up to CHUNK_FILES files of one source and CHUNK_BYTES
        (a larger file goes alone, with its own fsync), and no more than a fair
        share of what is ready, so that a few files still spread over the workers.
        """
        if self.storage_error:
            return  # the files wait, queued, for the storage
        limit = self.owner.workers * self.CHUNKS_PER_WORKER
        while self.ready and self.in_flight < limit and not self.cancel.is_set():
            share = min(self.CHUNK_FILES, -(-len(self.ready) // self.owner.workers))
            job = self.ready.popleft()
            chunk, size = [job], job.size
            while (
                self.ready
                and len(chunk) < share
                and self.ready[0].source is job.source
                and size + self.ready[0].size <= self.CHUNK_BYTES
            ):
                chunk.append(self.ready.popleft())
                size += chunk[-1].size
            written = Written()
            self.copying.add(written)
            workers.submit(self._copy, chunk, written)
            self.in_flight += 1

    def _copy(self, jobs: list[Job], written: Written) -> None:
        """In a worker thread: copy a chunk of files (all of one source), counting the bytes in `written`;
        hand the outcomes to the engine thread."""
        source = jobs[0].source
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
            )
        except Exception as error:
            log.exception("copying to %s failed unexpectedly", source.dest)
            outcomes = [
                (FAILED, f"cannot copy {shown(os.path.join(source.root, job.rel))} to {source.dest}: {error}")
                for job in jobs
            ]
        self.results.put((jobs, outcomes, written))

    def _drain(self, timeout: float) -> None:
        """Take copy outcomes, waiting up to `timeout` for the first."""
        try:
            result = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
            while True:
                if result is not None:
                    jobs, outcomes, written = result
                    self.in_flight -= 1
                    self.copying.discard(written)
                    self.written_bytes += written.bytes
                    for job, (outcome, reason) in zip(jobs, outcomes, strict=True):
                        self._settle(job, outcome, reason)
                result = self.results.get_nowait()
        except queue.Empty:
            pass

    def _settle(self, job: Job, outcome: str, reason: str) -> None:
        source, rel = job.source, job.rel
        file = source.files.get(rel)
        if outcome == COPIED:
            self.copied_files += 1
            self.copied_bytes += job.size
            self.last_file = os.path.join(source.root, rel)
            self.owner.ledger.add(source.root, rel, job.size, job.mtime_ns, source.dest)
            self.synced_dirs.add(os.path.dirname(os.path.join(source.dest, rel)))
        if file is None or file.state != QUEUED:
            return  # removed (or seen again) meanwhile
        if outcome == COPIED and (file.size, file.mtime_ns) == (job.size, job.mtime_ns):
            self._set_state(file, DONE)
            file.attempts = 0
            self.errors.pop((source.root, rel), None)
            self.done_files += 1
            self.done_bytes += job.size
            self._audit_later(source, rel, file)
        elif outcome == VANISHED:
            self._forget(source, rel)
        elif outcome == FAILED:
            self._fail(source, rel, file, reason)
        else:  # changed, cancelled, no storage, or copied a version that has changed since
            if outcome == NO_STORAGE:
                self.storage_error = reason
            self._set_state(file, PENDING)
            file.stable_since = time.monotonic()
            source.pending.add(rel)

    def _fail(self, source: Source, rel: str, file: File, reason: str) -> None:
        """Keep the file for a retry with exponential backoff; the state shows Error meanwhile."""
        source.pending.discard(rel)
        self._set_state(file, FAILED)
        file.attempts += 1
        delay = min(self.owner.retry_max, self.owner.retry_initial * 2 ** (file.attempts - 1))
        file.retry_at = time.monotonic() + delay
        source.failed.add(rel)
        key = (source.root, rel)
        self.errors.pop(key, None)
        self.errors[key] = reason
        log.warning("transfer of %s: %s (attempt %s, retry in %.1f s)", self.experiment, reason, file.attempts, delay)

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
        return (
            self.first_pass_done
            and not self.ready
            and not self.in_flight
            and not any(source.pending or source.failed for source in self.sources)
        )

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
        already = self.done_files - self.copied_files
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
        problems += list(self.errors.values())[::-1]
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
            files_done=self.done_files,
            files_total=sum(len(source.files) for source in self.sources),
            bytes_done=float(self.done_bytes + copying),
            bytes_total=float(self.ready_bytes),
            rate_mb_s=rate,
            last_file=shown(self.last_file),
            message=shown(message),
        )

    def summary(self) -> str:
        return f"{self.copied_files} files, {self.copied_bytes / 1e6:.1f} MB sent{not_followed(self.sources)}"
