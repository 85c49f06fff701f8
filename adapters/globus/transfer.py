"""`GlobusTransfer`: raw data moved with Globus tasks when `dm.transfer: globus`. Every method
returns at once; a background thread follows the task."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import globus_sdk

from ...ioc.domain.model import Experiment, GlobusError
from ...ioc.domain.ports import SentFile, TransferProgress, TransferState
from ...ioc.statefiles import disk_full, private_file
from ..transfer.folders import Folders, SymlinkRefused, shown
from .access import GlobusAccess
from .client import Clients, collection_path, describe_error, is_permanent

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One transfer the IOC asked for; what the state file keeps."""

    experiment: str
    items: list[tuple[str, str]]  # (source folder on the data host, destination folder on the collection)
    once: bool
    task_ids: list[str] = field(default_factory=list)
    ended_ids: list[str] = field(default_factory=list)  # tasks whose end (and bytes) is counted
    bytes_before: float = 0.0  # bytes moved by the ended tasks of this job
    submission_id: str = ""  # of the pass being submitted: a retry after a lost answer cannot make a second task
    sent: list[tuple[str, float]] = field(default_factory=list)  # (task, its end) of ended tasks that moved files


@dataclass
class _Control:
    """How the IOC talks to one transfer thread: stop it, and whether to cancel its task."""

    stop: threading.Event = field(default_factory=threading.Event)
    cancel: bool = False


class GlobusTransfer:
    """`ports.Transfer` with Globus tasks, for `dm.transfer: globus`.

    Each source folder (an absolute path on `source_collection_id`, the data
    host's collection, rooted at `/`) goes recursively to its destination
    folder under `storage_root` on the guest collection of `access`, with
    `sync_level="checksum"`; a source folder that does not exist yet (`_rec`
    before reconstruction) is left out of that pass. A
    background thread polls the task every `poll_interval` seconds; when
    continuous, it submits a new pass once the previous one ended and at least
    `resubmit_interval` seconds after it started, so new files follow and files
    already there are skipped.

    What survives a restart: with `state_path`, the job (folders, mode, task
    ids, bytes counted) is written there atomically at each change; `resume()`
    picks the last task up again (Globus tasks run on without the IOC).
    `stop()`, the end of an upload and a failed task remove the file;
    `shutdown()` leaves it.

    The files sent (`sent_since`) are the successful transfers of the job's ended tasks, each counted as
    sent when its task ended; their size and mtime are read in the storage, which the IOC sees.
    """

    def __init__(
        self,
        access: GlobusAccess,
        source_collection_id: str,
        state_path: Path | None = None,
        *,
        poll_interval: float = 10.0,
        resubmit_interval: float = 30.0,
        transfer_client: globus_sdk.TransferClient | None = None,
    ):
        self.source_collection_id = source_collection_id
        self.collection_id = access.collection_id
        self.storage_root = access.storage_root
        self.state_path = state_path
        self.poll_interval = poll_interval
        self.resubmit_interval = resubmit_interval
        # its own clients (own HTTP session): this thread never shares a session with Access calls
        self._clients = Clients(
            access.client_id,
            access.client_secret_file,
            max_retries=access.max_retries,
            timeout=access.timeout,
            transfer_client=transfer_client,
        )
        self._start_lock = threading.Lock()  # one start/resume at a time
        self._lock = threading.Lock()  # guards the fields below
        self._progress = TransferProgress()
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._control = _Control()

    # ---- ports.Transfer

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start a Globus transfer of `{source folder: destination folder}`; returns at once."""
        if not self.source_collection_id:
            raise GlobusError("Globus transfer needs globus.source_collection_id (the data host's collection)")
        if not sources:
            raise GlobusError(f"Globus transfer of {experiment.name}: no source folders given")
        items = [(_source_path(src), collection_path(self.storage_root, dest)) for src, dest in sources.items()]
        with self._start_lock:
            running = self._running_job()
            if running is not None:
                return f"Globus transfer of {running} is already running"
            self._launch(_Job(experiment.name, items, once))
        mode = "one pass" if once else "continuous"
        return f"Globus transfer of {experiment.name} started ({mode}, {len(items)} folder(s))"

    def stop(self) -> str:
        """Stop following new files and cancel the running task; returns at once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._control.stop.is_set():
                return "No Globus transfer is running"
            name = self._job.experiment if self._job else ""
            self._control.cancel = True
            self._control.stop.set()
            self._progress = dataclasses.replace(self._progress, state=TransferState.STOPPED, rate_mb_s=0.0, message="")
        return f"Stopping the Globus transfer of {name}"

    def progress(self) -> TransferProgress:
        with self._lock:
            return self._progress

    def resume(self) -> str | None:
        """Pick up the job recorded in `state_path`, if any: a sentence, or None."""
        job = self._load_state()
        if job is None:
            return None
        if job.once and job.task_ids and job.task_ids[-1] in job.ended_ids:
            self._forget_state()  # the upload had ended; only the clean-up was missed
            return None
        with self._start_lock:
            if self._running_job() is not None:
                return None
            self._launch(job)
        task = job.task_ids[-1] if job.task_ids else "none yet"
        return f"Resumed the Globus transfer of {job.experiment} (last task {task})"

    def forget(self, sources: Mapping[str, str]) -> None:
        """Nothing to forget: this adapter keeps no record of the files sent.

        Every pass is a Globus task with `sync_level="checksum"`, which compares
        each file with the destination itself: a file missing there (its
        storage deleted) is sent again by the next pass.
        """

    def sent_since(self, mark: float, storage: str) -> list[SentFile]:
        """The files the tasks of the last job that ended after `mark` moved into `storage`.

        A task still running is not waited for (Globus lists a task's transfers once it ended): its files
        are in a later dataset. After `stop()`, the cancel of the last task is waited for a few seconds.
        """
        with self._lock:
            job, thread, stopping = self._job, self._thread, self._control.stop.is_set()
        if job is None:
            return []
        if stopping and thread is not None:
            thread.join(STOP_WAIT)  # bounded: the cancel of the last task is under way
        prefix = collection_path(self.storage_root, storage)
        folders = _open_storage_root(str(self.storage_root))
        try:
            self._note_last_task(job)
            with self._lock:
                tasks = [(task_id, ended) for task_id, ended in job.sent if ended > mark]
            sent, missing = [], 0
            for task_id, ended in tasks:
                for item in self._clients.transfer().paginated.task_successful_transfers(task_id).items():
                    destination = str(item.get("destination_path") or "")
                    if not destination.startswith(prefix):
                        continue
                    found = self._stat(folders, destination, ended)
                    missing += found is None
                    if found is not None:
                        sent.append(found)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            raise GlobusError(f"Globus: listing the files sent for {job.experiment}: {describe_error(error)}") from None
        finally:
            if folders is not None:
                folders.close()
        if missing:
            log.warning("Globus transfer of %s: %s file(s) sent are gone from %s (or not regular files there)",
                        job.experiment, missing, storage)  # fmt: skip
        return sent

    def _note_last_task(self, job: _Job) -> None:
        """The job's last task, when it ended after the thread stopped following it (a cancel at `stop()`)."""
        if not job.task_ids:
            return
        task_id = job.task_ids[-1]
        with self._lock:
            known = task_id in job.ended_ids or any(task_id == sent for sent, _ in job.sent)
            following = self._thread is not None and self._thread.is_alive()
        if known or following:
            return
        task = self._clients.transfer().get_task(task_id)
        if task.get("status") in ("SUCCEEDED", "FAILED"):
            self._note_sent(job, task_id, task)
        else:
            log.info("Globus transfer of %s: task %s still runs; its files go in a later dataset", job.experiment,
                     task_id)  # fmt: skip

    def _note_sent(self, job: _Job, task_id: str, task: Mapping[str, Any] | globus_sdk.GlobusHTTPResponse) -> None:
        """Keep an ended task that moved files, with when it ended, for `sent_since` (the caller saves the job)."""
        if int(task.get("files_transferred") or 0) <= 0:
            return
        with self._lock:
            if all(task_id != sent for sent, _ in job.sent):
                job.sent.append((task_id, _epoch(task.get("completion_time"))))

    def _stat(self, folders: Folders | None, destination: str, sent_at: float) -> SentFile | None:
        """A file Globus put at `destination` (a path on the guest collection), as it is in storage now:
        reached from storage_root (`folders`) one name at a time, never through a symbolic link; None when
        gone, or not a regular file (a link planted in the storage would put an outside file's size and
        time in the record: skipped with a warning)."""
        relative = os.path.normpath(destination.lstrip("/"))
        path = os.path.join(self.storage_root, relative)
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

    # ---- extras

    def shutdown(self, timeout: float = 5.0) -> None:
        """End the thread for an IOC exit: the task runs on and the state file stays for `resume()`."""
        with self._lock:
            thread = self._thread
            self._control.stop.set()
        if thread is not None:
            thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background thread to end."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- the background thread

    def _running_job(self) -> str | None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._control.stop.is_set():
                return self._job.experiment if self._job else ""
            return None

    def _launch(self, job: _Job) -> None:
        control = _Control()
        thread = threading.Thread(
            target=self._run, args=(job, control), name=f"globus-transfer-{job.experiment}", daemon=True
        )
        with self._lock:
            self._job, self._control, self._thread = job, control, thread
            self._progress = TransferProgress(state=TransferState.RUNNING)
        self._save_state(job)
        thread.start()

    def _run(self, job: _Job, control: _Control) -> None:
        stop = control.stop
        task_id = job.task_ids[-1] if job.task_ids and job.task_ids[-1] not in job.ended_ids else None
        last_submit = time.monotonic() if task_id else None
        finished = False
        while not stop.is_set() and not finished:
            try:
                if task_id is None and (
                    last_submit is None or time.monotonic() - last_submit >= self.resubmit_interval
                ):
                    last_submit = time.monotonic()
                    task_id = self._submit(job)
                    if task_id is None and job.once:
                        message = f"Globus upload of {job.experiment}: none of its source folders exists, nothing sent"
                        self._set(control, state=TransferState.STOPPED, rate_mb_s=0.0, message=message)
                        finished = True
                        continue
                if task_id is not None:
                    task = self._clients.transfer().get_task(task_id)
                    if stop.is_set():
                        break
                    ended, finished = self._record(job, task_id, task, control)
                    if ended:
                        task_id = None
            except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, GlobusError) as error:
                reason = str(error) if isinstance(error, GlobusError) else describe_error(error)
                log.warning("Globus transfer of %s: %s", job.experiment, reason)
                finished = is_permanent(error)
                message = f"Globus transfer of {job.experiment}: {reason}"
                self._set(control, state=TransferState.ERROR, rate_mb_s=0.0, message=message)
            except Exception:
                log.exception("Globus transfer of %s: unexpected failure", job.experiment)
                message = f"Globus transfer of {job.experiment}: unexpected failure, see the IOC log"
                self._set(control, state=TransferState.ERROR, rate_mb_s=0.0, message=message)
            if not finished:
                stop.wait(self.poll_interval)
        self._wind_up(job, control, task_id, finished=finished)
        log.info("Globus transfer of %s: thread ends", job.experiment)

    def _wind_up(self, job: _Job, control: _Control, task_id: str | None, *, finished: bool) -> None:
        """After the loop: cancel the task when asked to; forget the job when it ended and is still the current one."""
        if control.cancel:
            self._cancel_task(job, task_id)
        if finished or control.cancel:
            with self._lock:
                current = self._job is job
            if current:
                self._forget_state()

    def _submit(self, job: _Job) -> str | None:
        """Submit one pass over the source folders that exist; None when none does."""
        transfer = self._clients.transfer()
        items = [(source, destination) for source, destination in job.items if self._exists(transfer, source)]
        if not items:
            log.info("Globus transfer of %s: no source folder exists yet", job.experiment)
            return None
        if not job.submission_id:
            job.submission_id = str(transfer.get_submission_id()["value"])
            self._save_state(job)
        data = globus_sdk.TransferData(
            submission_id=job.submission_id,
            source_endpoint=self.source_collection_id,
            destination_endpoint=self.collection_id,
            label=_LABEL_UNSAFE.sub("_", f"dmagic {job.experiment}")[:128],
            sync_level="checksum",
            verify_checksum=True,
            preserve_timestamp=True,
        )
        for source, destination in items:
            data.add_item(source, destination, recursive=True)
        response = transfer.submit_transfer(data)
        task_id = str(response["task_id"])
        job.task_ids.append(task_id)
        job.submission_id = ""
        self._save_state(job)
        log.info("Globus transfer of %s: submitted task %s", job.experiment, task_id)
        return task_id

    def _exists(self, transfer: globus_sdk.TransferClient, folder: str) -> bool:
        """Whether `folder` exists on the source collection (a missing one would fail the whole task)."""
        try:
            transfer.operation_ls(self.source_collection_id, path=folder, limit=1)
        except globus_sdk.GlobusAPIError as error:
            if error.http_status == 404:
                return False
            raise
        return True

    def _record(
        self, job: _Job, task_id: str, task: Mapping[str, Any] | globus_sdk.GlobusHTTPResponse, control: _Control
    ) -> tuple[bool, bool]:
        """Publish the task's state; return (task ended, job ended)."""
        status = task.get("status", "")
        files_total = int(task.get("files") or 0)
        files_done = int(task.get("files_transferred") or 0) + int(task.get("files_skipped") or 0)
        task_bytes = float(task.get("bytes_transferred") or 0)
        counts: dict[str, float] = {"files_done": files_done, "files_total": files_total}
        if status in ("SUCCEEDED", "FAILED"):
            job.bytes_before += task_bytes
            job.ended_ids.append(task_id)
            self._note_sent(job, task_id, task)
            self._save_state(job)
            counts["bytes_done"] = job.bytes_before
        else:
            counts["bytes_done"] = job.bytes_before + task_bytes
        if status == "SUCCEEDED" and job.once:
            summary = (
                f"Globus upload of {job.experiment} done: {files_done} file(s) in place, "
                f"{job.bytes_before / 1e6:.1f} MB transferred"
            )
            log.info("%s (task %s)", summary, task_id)
            self._set(control, state=TransferState.STOPPED, rate_mb_s=0.0, message=summary, **counts)
            return True, True
        if status == "SUCCEEDED":
            self._set(control, state=TransferState.RUNNING, rate_mb_s=0.0, message="", **counts)
            return True, False
        if status == "FAILED":
            reason = (task.get("fatal_error") or {}).get("description") or task.get("nice_status") or "failed"
            message = f"Globus transfer of {job.experiment} failed (task {task_id}): {reason}"
            log.error("%s", message)
            self._set(control, state=TransferState.ERROR, rate_mb_s=0.0, message=message, **counts)
            return True, True
        if status == "INACTIVE":
            message = f"Globus task {task_id} of {job.experiment} is paused: {task.get('nice_status') or 'inactive'}"
            self._set(control, state=TransferState.ERROR, rate_mb_s=0.0, message=message, **counts)
            return False, False
        rate = float(task.get("effective_bytes_per_second") or 0) / 1e6
        self._set(control, state=TransferState.RUNNING, rate_mb_s=rate, message="", **counts)
        return False, False

    def _cancel_task(self, job: _Job, task_id: str | None) -> None:
        if task_id is None:
            return
        try:
            self._clients.transfer().cancel_task(task_id)
            log.info("Globus transfer of %s: cancelled task %s", job.experiment, task_id)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, GlobusError) as error:
            reason = str(error) if isinstance(error, GlobusError) else describe_error(error)
            log.warning("Globus transfer of %s: cancelling task %s failed: %s", job.experiment, task_id, reason)

    def _set(self, control: _Control, **changes: Any) -> None:
        """Update the progress snapshot, unless this thread's job was stopped or replaced meanwhile."""
        with self._lock:
            if self._control is control and not control.cancel:
                self._progress = dataclasses.replace(self._progress, **changes)

    # ---- the state file

    def _save_state(self, job: _Job) -> None:
        """Write the job to the state file: 0600 whatever the umask (it names folders and tasks), written
        aside, made durable, then renamed over the last one, so that a crash leaves one whole."""
        if self.state_path is None:
            return
        aside = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            private_file(aside)
            fd = os.open(aside, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "w", encoding="utf-8") as file:
                file.write(json.dumps(dataclasses.asdict(job), indent=1))
                file.flush()
                os.fsync(file.fileno())
            os.replace(aside, self.state_path)
        except OSError as error:
            reason = f"state_dir full ({error.strerror})" if disk_full(error) else str(error)
            log.warning("Globus transfer: cannot write %s: %s", self.state_path, reason)
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)

    def _load_state(self) -> _Job | None:
        if self.state_path is None or not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            return _Job(
                experiment=str(state["experiment"]),
                items=[(str(src), str(dest)) for src, dest in state["items"]],
                once=bool(state["once"]),
                task_ids=[str(task) for task in state["task_ids"]],
                ended_ids=[str(task) for task in state.get("ended_ids", [])],
                bytes_before=float(state.get("bytes_before", 0.0)),
                submission_id=str(state.get("submission_id", "")),
                sent=[(str(task), float(ended)) for task, ended in state.get("sent", [])],
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("Globus transfer: ignoring unreadable state file %s: %s", self.state_path, error)
            return None

    def _forget_state(self) -> None:
        if self.state_path is None:
            return
        try:
            self.state_path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("Globus transfer: cannot remove %s: %s", self.state_path, error)


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 _,-]")
STOP_WAIT = 5.0  # seconds sent_since waits for a stopping transfer to cancel its task


def _open_storage_root(storage_root: str) -> Folders | None:
    """storage_root's folders, to reach the files sent without following a link; None when it cannot be
    opened (its disk not mounted): every file sent is then gone. A symlink at storage_root is the admin's."""
    try:
        return Folders(storage_root, os.open(storage_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), make=False)
    except OSError as error:
        log.warning("Globus transfer: cannot open dm.storage_root %s: %s", storage_root, error.strerror)
        return None


def _epoch(text: Any) -> float:
    """A task's `completion_time` (ISO 8601) in seconds since the epoch; now when Globus gives none."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _source_path(source: str) -> str:
    """An absolute folder on the data host's collection, with a trailing slash."""
    path = PurePosixPath(source)
    if not path.is_absolute() or ".." in path.parts:
        raise GlobusError(f"Globus transfer: source {source!r} must be an absolute folder on the data host")
    return f"{path.as_posix().rstrip('/')}/"
