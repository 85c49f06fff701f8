"""`LocalTransfer`: `ports.Transfer` by the built-in engine, copying on this host."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from ...ioc.domain.errors import DMError, InputError
from ...ioc.domain.experiment import Experiment
from ...ioc.domain.ports import SentFile, TransferProgress, TransferState
from ...ioc.statefiles import keep_aside
from .folders import SymlinkRefused, is_inside, open_folder, reason_for, shown
from .ledger import LEDGER_COMPANIONS, Ledger, LedgerUnreadable
from .run import Run
from .storage import Storage, StorageUnavailable

log = logging.getLogger(__name__)


class LocalTransfer:
    """`ports.Transfer` by copying on this host, with a resumable SQLite ledger.

    A second `start` for the same experiment, sources and mode while it runs
    returns a sentence saying so (DaqStart is idempotent); a start for another
    experiment or other sources raises `InputError`: nothing changed. So does a
    source folder that is a symbolic link or outside `source_top`
    (dm.data_top_dir); a storage that is not the one Create made is a DMError.
    """

    STOP_TIMEOUT = 10.0  # seconds stop() waits for copies to abandon their temporary files

    def __init__(
        self,
        ledger_path: Path,
        settle_time: float = 2.0,
        checksum: bool = False,
        workers: int = 4,
        poll_interval: float = 0.5,
        source_top: Path | str | None = None,
    ):
        self.ledger_path = Path(ledger_path)
        # Source folders must be inside it, reached without a symlink (None: each one's parent folder).
        self.source_top = os.path.normpath(os.path.abspath(source_top)) if source_top else None
        self.settle_time = settle_time
        self.checksum = checksum
        self.workers = max(1, workers)
        self.poll_interval = poll_interval
        self.retry_initial = 1.0  # first retry delay of a failed file, doubled up to retry_max
        self.retry_max = 60.0
        self._ledger: Ledger | None = None
        self._control = threading.Lock()  # start / stop / resume, one at a time
        self._progress_lock = threading.Lock()
        self._progress = TransferProgress()
        self._run: Run | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use (nothing touches the disk at construction).

        One that cannot be read is kept aside and a fresh one started, saying so (see docs/transfer.md).
        """
        if self._ledger is None:
            with self._ledger_errors():
                try:
                    self._ledger = Ledger(self.ledger_path)
                except LedgerUnreadable as error:
                    self._ledger = self._start_afresh(str(error))
        return self._ledger

    def _start_afresh(self, reason: str) -> Ledger:
        """Keep the unreadable ledger aside (with its WAL), open a fresh one, show an Error saying so."""
        where = self.ledger_path
        try:
            aside = keep_aside(where, LEDGER_COMPANIONS)
        except OSError as error:
            raise DMError(
                f"the transfer ledger {where} cannot be read ({reason}) nor kept aside ({error.strerror}): "
                "move it away by hand"
            ) from None
        try:
            ledger = Ledger(where)
        except LedgerUnreadable as error:  # a new file that cannot be read: the disk, not the data
            raise DMError(f"cannot open the transfer ledger {where}: {error}") from None
        notice = (
            f"the transfer ledger {where} could not be read ({reason}): kept it as {aside.name}, started a fresh "
            "one; a transfer it recorded as running is not resumed (DaqStart it again); files already in "
            "storage with the same size and time are not copied again"
        )
        log.error("%s", notice)
        with self._progress_lock:
            self._progress = TransferProgress(state=TransferState.ERROR, message=notice)
        return ledger

    @contextlib.contextmanager
    def _ledger_errors(self) -> Iterator[None]:
        """Ledger failures as DMError, with a message fit for Status."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            raise DMError(f"cannot use the transfer ledger {self.ledger_path}: {error}") from error

    @property
    def poll_seconds(self) -> float:
        """Duration of the running transfer's last poll (for benchmarks and diagnostics)."""
        run = self._run
        return run.poll_seconds if run is not None else 0.0

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start sending each source folder into its destination; return a sentence for Status."""
        sources = _check_sources(sources)
        self._check_source_folders(sources)
        storage = Storage.of(experiment, sources)
        with self._control:
            run = self._run
            if run is not None and run.alive:
                same = (
                    run.experiment == experiment.name
                    and {s.root: s.dest for s in run.sources} == sources
                    and run.once == once
                )
                if same:
                    return f"the {'upload' if once else 'transfer'} of {experiment.name} is already running"
                raise InputError(
                    f"a {'upload' if run.once else 'transfer'} of {run.experiment} is running; "
                    f"stop it (DaqStop) before starting one for {experiment.name}"
                )
            try:
                storage.check(list(sources.values()))
            except StorageUnavailable as error:
                raise DMError(str(error)) from None
            with self._ledger_errors():
                self.ledger.set_running(experiment.name, sources, once, storage.path, storage.marker)
            return self._launch(experiment.name, sources, once, storage, "uploading" if once else "transferring")

    def _check_source_folders(self, sources: Mapping[str, str]) -> None:
        """Refuse a source folder outside `source_top` or reached through a symlink; one not there yet is fine."""
        for root in sources:
            if self.source_top is not None and not is_inside(root, self.source_top):
                raise InputError(
                    f"source folder {shown(root)} is not inside dm.data_top_dir {self.source_top}: refused, "
                    "nothing transferred"
                )
            try:
                os.close(open_folder(root, self.source_top))
            except FileNotFoundError:
                continue  # a transfer waits for it, an upload skips it
            except SymlinkRefused as error:
                link = "" if error.filename == root else f" ({shown(error.filename)} is one)"
                raise InputError(
                    f"source folder {shown(root)} is reached through a symbolic link{link}: refused, nothing "
                    "transferred (sources must be real folders under dm.data_top_dir)"
                ) from None
            except OSError as error:
                raise InputError(
                    f"source folder {shown(root)}: {reason_for(error, root)}; nothing transferred"
                ) from None

    def resume(self) -> str | None:
        """Restart the transfer that was running when the IOC stopped, if any."""
        with self._control:
            if self._run is not None and self._run.alive:
                return None
            with self._ledger_errors():
                definition = self.ledger.running()
            if definition is None:
                return None
            name, sources, once = definition.experiment, definition.sources, definition.once
            # Not checked here: a storage or source folder that is not right shows as an Error of the run.
            if definition.storage:
                storage = Storage(definition.storage, name, definition.marker)
            else:  # recorded by a version without storage markers
                storage = Storage.of(Experiment(name=name), sources)
            verb = "resumed uploading" if once else "resumed transferring"
            return self._launch(name, sources, once, storage, verb)

    def _launch(self, name: str, sources: dict[str, str], once: bool, storage: Storage, verb: str) -> str:
        run = Run(self, name, sources, once, storage)
        self._run = run
        self.show_progress(run, run.snapshot(TransferState.RUNNING, "", rate=0.0))
        run.thread.start()
        present = [root for root in sources if os.path.isdir(root)]
        missing = [root for root in sources if root not in present]
        sentence = f"{verb} {name}: " + ", ".join(f"{root} -> {sources[root]}" for root in present or sources)
        if missing:
            if once:
                sentence += (
                    "; "
                    + ", ".join(missing)
                    + (" does not exist, skipped" if len(missing) == 1 else " do not exist, skipped")
                )
            else:
                sentence += "; waiting for " + " and ".join(missing) + " to appear"
        log.info("%s", sentence)
        return sentence

    def stop(self) -> str:
        """Stop the transfer: copies under way are abandoned (no temporary file stays)."""
        with self._control:
            run = self._run
            if run is None or not run.alive:
                with self._ledger_errors():
                    self.ledger.clear_running()
                with self._progress_lock:
                    if self._progress.state == TransferState.ERROR:  # e.g. a ledger kept aside: seen, cleared
                        self._progress = dataclasses.replace(self._progress, state=TransferState.STOPPED, message="")
                return "no transfer is running"
            run.cancel.set()
            run.wake()
            run.thread.join(self.STOP_TIMEOUT)
            with self._ledger_errors():
                self.ledger.clear_running()
            kind = "upload" if run.once else "transfer"
            sentence = f"{kind} of {run.experiment} stopped: {run.summary()}"
            if run.thread.is_alive():
                sentence += "; a copy is still finishing"
            self.show_progress(run, run.snapshot(TransferState.STOPPED, sentence, rate=0.0), final=True)
            log.info("%s", sentence)
            return sentence

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget the files sent from these sources to their destinations (that storage was deleted).

        One ledger transaction whatever their number (their rows go later, a
        chunk at each commit), so that a new start (a re-created experiment)
        sends every file again. Refused with InputError
        while a transfer of one of these sources runs: nothing forgotten.
        """
        sources = _normalized(sources)
        if not sources:
            return
        with self._control:
            run = self._run
            if run is not None and run.alive:
                busy = [source.root for source in run.sources if source.root in sources]
                if busy:
                    raise InputError(
                        f"the {'upload' if run.once else 'transfer'} of {run.experiment} from {', '.join(busy)} "
                        "is running (or still finishing): stop it (DaqStop) first; its sent files not forgotten"
                    )
            with self._ledger_errors():
                self.ledger.forget(sources)
        log.info("transfer ledger: forgot the files sent from %s", ", ".join(sources))

    def sent_since(self, mark: float, storage: str) -> Iterator[SentFile]:
        """The files the ledger records as sent into `storage` after `mark`, each with the checksum its copy
        was verified against (dm.checksum; none for a file found already there); read as they are iterated."""
        with self._ledger_errors():
            for path, size, mtime_ns, sent_at, checksum in self.ledger.sent_since(mark, storage):
                yield SentFile(path, size, mtime_ns / 1e9, sent_at, checksum)

    def progress(self) -> TransferProgress:
        """The latest snapshot; cheap and thread-safe."""
        with self._progress_lock:
            return self._progress

    def show_progress(self, run: Run, progress: TransferProgress, final: bool = False) -> None:
        """Show `run`'s snapshot, unless it is a late one from a run that was stopped or replaced."""
        with self._progress_lock:
            if run is self._run and (final or not run.cancel.is_set()):
                self._progress = progress

    def close(self) -> None:
        """Stop any transfer (keeping its definition for resume) and close the ledger."""
        run = self._run
        if run is not None and run.alive:
            run.cancel.set()
            run.wake()
            run.thread.join(self.STOP_TIMEOUT)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _check_sources(sources: Mapping[str, str]) -> dict[str, str]:
    """Absolute, normalized {source: destination}; refuse a destination inside its source."""
    if not sources:
        raise InputError("no source folder to transfer")
    checked = {}
    for root, dest in _normalized(sources).items():
        if not os.path.isabs(root) or not os.path.isabs(dest):
            raise InputError(f"transfer folders must be absolute paths: {root} -> {dest}")
        if os.path.commonpath([root, dest]) in (root, dest):
            raise InputError(f"cannot transfer {root} into {dest}: one folder is inside the other")
        checked[root] = dest
    return checked


def _normalized(sources: Mapping[str, str]) -> dict[str, str]:
    """{source: destination} with both paths normalized, as the ledger records them."""
    return {os.path.normpath(os.fspath(root)): os.path.normpath(os.fspath(dest)) for root, dest in sources.items()}
