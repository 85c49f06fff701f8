"""`StorageWalks`: the DM backend's walks of a storage tree that take long, in the background, resumed at start.

A walk is what AddUser, RemoveUser and Create leave below the storage folder once they have changed its own
ACL (access starts or ends there at once): the ACLs of every folder and file under it; and what Delete leaves
once it has renamed the storage aside: its removal. `run` walks it in the command while that takes under
`budget` seconds (a tree of some 20,000 files), as before; a longer walk, or one behind another walk of the
same tree, goes on in this component's own thread, one at a time in the order queued (a second AddUser of
an experiment waits for the first; a Delete drops the walks of the storage it removes).

Every walk is written to `{state_dir}/walks.json` (written aside, renamed) before it starts, and struck off
when it ends: a restart resumes each from the top of its tree (a walk done twice changes nothing the second
time). A walk in the background checks the storage's marker first: a tree that is no longer the storage
Create made is left alone. A queue that cannot be read is kept aside, said as a failed walk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ...ioc.domain.errors import DMagicError, DMError
from ...ioc.domain.naming import plural
from ...ioc.domain.ports import WalkEnd, WalkProgress
from ..transfer.folders import open_folder, shown
from .tree import Progress
from .walk import REMOVE, Walk, WalkFile, marker_id

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised out of a walk's progress: the IOC stops, or Delete dropped the walk, or its time in the command is up."""


class StorageWalks:
    """`ports.Walks`, and `run` for the DM backend. Without `path` (no state_dir: tests of the backend
    alone) every walk runs whole in the command."""

    BUDGET = 0.25  # seconds a walk may take in the command before it goes on in the background
    ENDED_KEPT = 16  # ends kept for the supervisor to say (it reads them twice a second)

    def __init__(self, path: Path | None = None, budget: float = BUDGET):
        self.path, self.budget = path, budget
        self._file = WalkFile(path) if path is not None else None
        self._lock = threading.Condition()
        self._queue: list[Walk] | None = None  # read from `path` on first use
        self._sizes: dict[str, int] = {}  # files each experiment's storage had at its last walk: the estimates
        self._unclaimed: list[Walk] = []  # gone to the background since the last `claim`, ended or not
        self._ended: deque[tuple[Walk | None, WalkEnd]] = deque(maxlen=self.ENDED_KEPT)
        self._ends = 0
        self._current: Walk | None = None
        self._started = 0.0
        self._done = 0
        self._dropped: Walk | None = None  # the current walk, dropped by Delete
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ for the DM backend

    def run(self, walk: Walk, fd: int, prepare: Callable[[], None] | None = None) -> tuple[str, int | None]:
        """Walk `walk` on `fd` (see `Walk.walk`; the marker of the storage is read there) here while it takes
        under the budget; else, or when a walk of its tree waits, in the background. `prepare` runs once the
        walk is saved, before it starts (Delete renames the storage aside there); when it raises, the walk is
        struck off. Returns the sentence of what a walk here left alone and its files; ('', None) when it
        goes on in the background."""
        if walk.action != REMOVE:
            walk.marker = marker_id(fd)
        done, deadline = 0, time.monotonic() + self.budget

        def in_time(files: int, finished: bool) -> None:
            nonlocal done
            done = files
            if self.path is not None and not finished and time.monotonic() > deadline:  # no state file: whole here
                raise _Stopped

        if self.path is None:
            if prepare is not None:
                prepare()
        elif not self._queued(walk, prepare):
            return "", None
        try:
            said = walk.walk(fd, in_time)
        except _Stopped:
            log.info("%s: longer than %.2f s, goes on in the background", walk.doing, self.budget)
            with self._lock:
                walk.held = False
                if walk.action == REMOVE:  # what is removed stays removed: counted in its end
                    walk.done = done
                    with contextlib.suppress(DMError):
                        self._save()
                self._wake()
            return "", None
        except BaseException:
            self._strike(walk, None)
            raise
        self._strike(walk, done)
        return said, done

    def _queued(self, walk: Walk, prepare: Callable[[], None] | None) -> bool:
        """Queue `walk`, saved, then `prepare`d; True when it is to run in the command (held from the worker),
        False when a walk of its tree waits before it (the worker's, woken)."""
        with self._lock:
            queue = self._loaded()
            walk.held = not any(queued.tree == walk.tree for queued in queue)
            queue.append(walk)
            try:
                self._save()
                if prepare is not None:
                    prepare()
            except BaseException:
                queue.remove(walk)
                with contextlib.suppress(DMError):
                    self._save()
                raise
            self._unclaimed.append(walk)
            if not walk.held:
                self._wake()
            return walk.held

    def drop(self, tree: str) -> None:
        """Strike off the walks of storage `tree` (its experiment is deleted); the one running stops."""
        with self._lock:
            queue = self._loaded()
            dropped = [walk for walk in queue if walk.tree == tree and not walk.held]
            for walk in dropped:
                if walk is self._current:
                    self._dropped = walk
                else:
                    queue.remove(walk)
                    if walk in self._unclaimed:
                        self._unclaimed.remove(walk)
            if dropped:
                log.info("dropped %s of %s: its experiment is deleted", plural(len(dropped), "walk"), tree)
                with contextlib.suppress(DMError):
                    self._save()

    # ------------------------------------------------------------------ ports.Walks

    def claim(self, by: str) -> int:
        with self._lock:
            claimed, self._unclaimed = self._unclaimed, []
            for walk in claimed:
                walk.by = by
            # one that ended already (the supervisor says no end while a command runs): news of `by` too
            ended = [(walk, replace(end, by=walk.by) if walk in claimed else end) for walk, end in self._ended]
            self._ended = deque(ended, maxlen=self.ENDED_KEPT)
            return len(claimed)

    def progress(self) -> WalkProgress:
        with self._lock:
            ended = tuple(end for _, end in self._ended)
            waiting = sum(not walk.held for walk in self._queue or ()) - (self._current is not None)
            walk = self._current
            if walk is None:
                return WalkProgress(waiting=waiting, ended=ended)
            return WalkProgress(doing=walk.doing, by=walk.by, files_done=self._done,
                                files_total=self._sizes.get(walk.experiment, 0),
                                seconds=time.monotonic() - self._started, waiting=waiting, ended=ended)  # fmt: skip

    def resume(self) -> str | None:
        if self.path is None:
            return None
        with self._lock:
            queue = self._loaded()
            if not queue:
                return None
            self._wake()
            more = f"; and {len(queue) - 3} more" if len(queue) > 3 else ""
            named = "; ".join(walk.doing for walk in queue[:3]) + more
            sentence = f"resumed {plural(len(queue), 'walk')} of experiment storage: {named}"
            log.info("%s", sentence)
            return sentence

    def close(self) -> None:
        """Stop the worker; the walk it runs stays queued, resumed at the next start."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(30)

    # ------------------------------------------------------------------ the worker

    def _wake(self) -> None:
        """Have the worker look at the queue (started on first use). Under the lock."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="walks", daemon=True)
            self._thread.start()
        self._lock.notify_all()

    def _next(self) -> Walk | None:
        """The first walk that is not running in a command and not behind another of its tree. Under the lock."""
        before: set[str] = set()
        for walk in self._queue or ():
            if not walk.held and walk.tree not in before:
                return walk
            before.add(walk.tree)
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                walk = self._next()
                while walk is None and not self._closing:
                    self._lock.wait()
                    walk = self._next()
                if walk is None or self._closing:
                    return
                self._current, self._started, self._done, self._dropped = walk, time.monotonic(), walk.done, None
            try:
                files, end = self._walk(walk)
            except _Stopped:
                with self._lock:
                    self._current = None
                    if self._dropped is not walk:
                        return  # the IOC stops: it stays queued, resumed at the next start
                log.info("%s: stopped, its experiment is deleted", walk.doing)
                files, end = None, None
            except Exception as error:  # a bug must not stop the walks: said, and the walk struck off
                log.exception("walk failed unexpectedly: %s", walk.doing)
                files, end = None, (f"{walk.doing} failed: internal error ({error}); see the IOC log", True, False)
            with self._lock:
                self._current = None
            self._strike(walk, files, end)

    def _walk(self, walk: Walk) -> tuple[int | None, tuple[str, bool, bool] | None]:
        """Walk `walk` in the background: (its files, its end: message, failed, warning)."""
        log.info("%s", walk.doing)
        try:
            fd = open_folder(walk.folder(), walk.root or None)
        except FileNotFoundError:
            return None, (f"{walk.doing}: left alone, {shown(walk.tree)} is gone", False, True)
        except (OSError, ValueError) as error:
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return None, (f"{walk.doing} failed: {shown(walk.folder())}: {why}", True, False)
        try:
            if walk.action != REMOVE and walk.marker and marker_id(fd) != walk.marker:
                return None, (f"{walk.doing}: left alone, {shown(walk.tree)} is no longer the storage Create made "
                              f"for {walk.experiment} (its marker changed)", False, True)  # fmt: skip
            said = walk.walk(fd, self._tick(walk))
        except (OSError, DMagicError) as error:
            if walk.action == REMOVE and isinstance(error, FileNotFoundError):  # never set aside, or all gone
                log.info("%s: nothing left to remove", walk.doing)
                return None, None
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return None, (f"{walk.doing} failed after {plural(self._done, 'file')}: {why}", True, False)
        finally:
            os.close(fd)
        seconds = time.monotonic() - self._started
        message = f"{walk.did}: {plural(self._done, 'file')} in {seconds:.1f} s" + (f"; {said}" if said else "")
        return self._done, (message, False, bool(said))

    def _tick(self, walk: Walk) -> Progress:
        def tick(files: int, finished: bool) -> None:
            with self._lock:
                self._done = walk.done + files
                if not finished and (self._closing or self._dropped is walk):
                    raise _Stopped

        return tick

    def _strike(self, walk: Walk, files: int | None, end: tuple[str, bool, bool] | None = None) -> None:
        """Strike `walk` off the queue; keep its count of files as the estimate of its tree's next walk, and
        its end for the supervisor (logged)."""
        with self._lock:
            if self._queue is not None and walk in self._queue:
                self._queue.remove(walk)
            if walk in self._unclaimed and end is None:
                self._unclaimed.remove(walk)
            if walk.action == REMOVE:
                self._sizes.pop(walk.experiment, None)
            elif files is not None:
                self._sizes[walk.experiment] = files
            try:
                self._save()
            except DMError as error:
                log.warning("%s", error)
            if end is not None:
                message, failed, warning = end
                self._ends += 1
                self._ended.append((walk, WalkEnd(self._ends, message, failed=failed, warning=warning, by=walk.by)))
                log.log(logging.WARNING if failed or warning else logging.INFO, "%s", message)

    # ------------------------------------------------------------------ the state file

    def _loaded(self) -> list[Walk]:
        """The queue, read from the state file on first use (one that cannot be read: a failed walk). Under
        the lock."""
        if self._queue is None:
            self._queue = []
            if self._file is not None:
                self._queue, self._sizes, problem = self._file.load()
                if problem:
                    self._ends += 1
                    self._ended.append((None, WalkEnd(self._ends, problem, failed=True)))
        return self._queue

    def _save(self) -> None:
        """Write the queue (DMError when it cannot be). Under the lock."""
        if self._file is not None:
            self._file.save(self._queue or [], self._sizes)
