"""`Tracker`: what a run knows of its source folders' files, and which of them to copy next.

Each file is followed from first sight (a scan, or the audit of the files sent) while it settles, in the
queue of files ready for the copy workers, to sent; a copy that failed is retried with back-off. A file
the ledger lists as sent, or found whole at its destination, is not copied again.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .copying import COPIED, FAILED, VANISHED
from .files import DONE, PENDING, QUEUED, File, Job, Source
from .folders import SymlinkRefused, shown
from .scan import Tree

if TYPE_CHECKING:
    from .local import LocalTransfer

log = logging.getLogger(__name__)

RecordSent = Callable[[Source, str, int, int, str], None]  # (source, rel, size, mtime_ns, checksum)


class Tracker:
    """The files of one run's source folders and their states; its counts make the run's progress."""

    AUDIT_PER_POLL = 500  # already-sent files re-stat'ed per poll

    def __init__(
        self,
        experiment: str,
        sources: Mapping[str, str],
        once: bool,
        owner: LocalTransfer,
        record_sent: RecordSent,
    ):
        self.experiment = experiment  # for the log
        self.once = once
        self.owner = owner  # its settings: settle_time, source_top, retry_initial, retry_max
        self.record_sent = record_sent  # a file found whole at its destination goes into the ledger
        self.sources = [Source(root, dest) for root, dest in sources.items()]
        self.ready: deque[Job] = deque()  # the files to copy, in order
        self.errors: dict[tuple[str, str], str] = {}  # (root, rel) -> why its copy failed
        self.done_files = 0
        self.done_bytes = 0
        self.ready_bytes = 0  # of the files sent or ready to send (every state but PENDING): Percent's total
        self.first_pass_done = False
        self.storage_there = True  # else a file the ledger lists as sent is not looked for at its destination

    def poll(self, now: float, *, storage_there: bool) -> None:
        """One poll of every source folder: scan (once only for an upload), settle, retry, audit."""
        wall = time.time()
        self.storage_there = storage_there
        for source in self.sources:
            if not self.once or not self.first_pass_done:
                self._scan(source, now, wall)
            self._check_pending(source, now)
            self._retry_failed(source, now)
            if not self.once:
                self._audit(source, now, wall)
        self.first_pass_done = True

    def all_sent(self) -> bool:
        """Every file found is sent: nothing waits to settle, to be copied or to be retried."""
        return (
            self.first_pass_done
            and not self.ready
            and not any(source.pending or source.failed for source in self.sources)
        )

    def settle(self, job: Job, outcome: str, reason: str) -> None:
        """The outcome of `job`'s copy for its file: sent, gone, failed (retried later), or to settle and be
        copied again (changed, cancelled, no storage, or copied a version that has changed since)."""
        source, rel = job.source, job.rel
        file = source.files.get(rel)
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
        else:
            self._set_state(file, PENDING)
            file.stable_since = time.monotonic()
            source.pending.add(rel)

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
        if not self.storage_there:
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
        self.record_sent(source, rel, size, mtime_ns, "")
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
