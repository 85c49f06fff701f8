"""`Tracker`: what a run knows of its source folders' files, and which of them to copy next.

Each file is followed from first sight (a scan, or the audit of the files sent) while it settles, in the
queue of files ready for the copy workers, to sent; a copy that failed is retried with back-off. A file
the ledger lists as sent, or found whole at its destination, is not copied again. A file sent is no object
here: the scan's tree knows its name, the ledger its size and mtime (see files.Source).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .copying import COPIED, FAILED, VANISHED
from .files import PENDING, QUEUED, File, Job, Source
from .folders import SymlinkRefused, shown
from .scan import Tree

if TYPE_CHECKING:
    from .local import LocalTransfer

log = logging.getLogger(__name__)

RecordSent = Callable[[Source, str, int, int, str], None]  # (source, rel, size, mtime_ns, checksum)


class Tracker:
    """The files of one run's source folders and their states; its counts make the run's progress."""

    # Files sent re-stat'ed per poll, in the ledger's order, round and round: a file rewritten in place (its
    # folder's times do not change) is found within files / AUDIT_PER_POLL polls (1M: 1000 polls, ~8 min).
    AUDIT_PER_POLL = 1000
    # Files not sent yet the scan may bring in; past that, folders wait for a later poll (a first scan of
    # a million files is taken a part at a time, copied meanwhile, and the memory stays bounded).
    WAITING_FILES = 50_000

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
        """One poll of every source folder: scan (an upload: until each is listed whole once), settle,
        retry, audit."""
        wall = time.time()
        self.storage_there = storage_there
        for source in self.sources:
            if not self.once or not source.scanned:
                self._scan(source, now, wall)
            self._check_pending(source, now)
            self._retry_failed(source, now)
            if not self.once:
                self._audit(source, now, wall)
        self.first_pass_done = self.first_pass_done or all(source.scanned for source in self.sources)

    def waiting_files(self) -> int:
        """The files known and not sent yet."""
        return sum(len(source.files) for source in self.sources)

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
            del source.files[rel]
            self._set_state(file, PENDING)  # no longer among the files waiting: among those sent
            self.errors.pop((source.root, rel), None)
            self._count_sent(job.size, +1)
        elif outcome == VANISHED:
            self._forget(source, rel, vanished=True)
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
                source.scanned = True  # not there yet: no error, it is picked up when it appears
                return
            source.tree = Tree(source.root, beneath)
            log.info("transfer of %s: scanning %s", self.experiment, source.root)
        try:
            found, removed = source.tree.poll(max(0, self.WAITING_FILES - self.waiting_files()))
        except FileNotFoundError:
            source.error = f"source folder {shown(source.root)} vanished"
            self._reset(source)  # a full rescan when it is back
            return
        except SymlinkRefused as error:
            link = shown(error.filename)
            source.error = f"source folder {shown(source.root)} refused: {link} is a symbolic link, not followed"
            self._reset(source)
            return
        except OSError as error:
            source.error = f"cannot read source folder {shown(source.root)}: {error.strerror or error}"
            source.scanned = True  # an upload ends, saying so
            return
        except ValueError:  # recorded before dm.data_top_dir changed
            source.error = f"source folder {shown(source.root)} is not inside dm.data_top_dir {beneath}: not read"
            source.scanned = True
            return
        source.scanned = source.scanned or not source.tree.behind
        source.error = next(iter(source.tree.problems.values()), "")
        self._gone(source, removed)
        new = [rel for rel, _, _ in found if rel not in source.files]
        sent = self._ledger_rows(source, new) if new else {}
        for rel in new:
            if not rel.isprintable():
                self._warn_odd_name(source, rel)
        for rel, size, mtime_ns in found:
            self._observe(source, rel, size, mtime_ns, now, wall, sent)

    def _reset(self, source: Source) -> None:
        """The source folder went (or is refused): forget what its tree knew; a new tree scans it afresh."""
        if source.tree is not None:
            self._gone(source, list(source.tree.known_files()))
        source.tree = Tree(source.root, self.owner.source_top)
        source.scanned = True  # an upload ends, saying so

    def _gone(self, source: Source, removed: list[str]) -> None:
        """Files the scan no longer finds (or replaced by others, found anew): those sent are no longer
        counted (their sizes from the ledger), the others are forgotten."""
        sent = []
        for rel in removed:
            if rel in source.files:
                self._forget(source, rel)
            else:
                sent.append(rel)
        if not sent:
            return
        sizes = self._ledger_rows(source, sent)
        for rel in sent:
            self._count_sent(sizes.get(rel, (0, 0))[0], -1)

    def _ledger_rows(self, source: Source, rels: list[str]) -> dict[str, tuple[int, int]]:
        """{rel: (size, mtime_ns)} of those of `rels` the ledger lists as sent from `source`; none when it
        cannot be read (then a file is sent again unless its copy is whole at its destination)."""
        try:
            return self.owner.ledger.sent_of(source.root, source.dest, rels)
        except sqlite3.Error as error:
            log.warning("transfer of %s: cannot read the transfer ledger: %s", self.experiment, error)
            return {}

    def _observe(
        self,
        source: Source,
        rel: str,
        size: int,
        mtime_ns: int,
        now: float,
        wall: float,
        sent: Mapping[str, tuple[int, int]],
    ) -> None:
        """A file seen by the scan or the audit: new (`sent`: the ledger's rows of the new ones), changed, or
        as before."""
        file = source.files.get(rel)
        if file is None:
            if sent.get(rel) == (size, mtime_ns):
                done = self._still_at_destination(source, rel)
            else:
                done = self._at_destination(source, rel, size, mtime_ns)
            if done:
                self._count_sent(size, +1)
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
        """`file` changed or went: it is no longer ready to send (PENDING)."""
        self._set_state(file, PENDING)
        source.pending.discard(rel)
        source.failed.discard(rel)
        self.errors.pop((source.root, rel), None)

    def _forget(self, source: Source, rel: str, *, vanished: bool = False) -> None:
        """Forget a file not sent; `vanished`: found gone (or no longer a file) here, not by the scan, whose
        tree forgets it too (a file there again is new)."""
        file = source.files.pop(rel, None)
        if file is not None:
            self._leave_state(source, rel, file)
        if vanished and source.tree is not None:
            source.tree.forget(rel)

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
                self._forget(source, rel, vanished=True)
                continue
            except OSError as error:
                self._fail(source, rel, file, f"cannot read {shown(os.path.join(source.root, rel))}: {error.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._forget(source, rel, vanished=True)  # a symlink or special file now: the scan says so
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
        """Re-stat the next AUDIT_PER_POLL files sent, in the ledger's order: catches a file rewritten in
        place, which changes neither its folder's mtime nor its ctime."""
        tree = source.tree
        if tree is None:
            return
        try:
            rows = self.owner.ledger.sent_after(source.root, source.dest, source.audited_to, self.AUDIT_PER_POLL)
        except sqlite3.Error as error:
            log.warning("transfer of %s: cannot read the transfer ledger: %s", self.experiment, error)
            return
        source.audited_to = rows[-1][0] if len(rows) == self.AUDIT_PER_POLL else ""  # at the end: again
        inside = f"{source.root}/"
        for rel, size, mtime_ns in rows:
            if rel in source.files or not tree.knows(rel):
                continue  # not sent yet (or no longer), or not listed yet
            try:
                st = os.stat(inside + rel, follow_symlinks=False)
            except OSError:
                continue  # a removal shows in the scan
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) and stat.S_ISREG(st.st_mode):
                self._count_sent(size, -1)
                self._observe(source, rel, st.st_size, st.st_mtime_ns, now, wall, {})

    def _count_sent(self, size: int, sign: int) -> None:
        """A file of `size` bytes sent (+1), or no longer (-1: gone, or changed since): the counts of the
        files sent and Percent's total follow."""
        self.done_files += sign
        self.done_bytes += sign * size
        self.ready_bytes += sign * size

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
