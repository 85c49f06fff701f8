"""`GlobusTransfer`: raw data moved with Globus tasks when `dm.transfer: globus`. Every method
returns at once; a background thread follows the task."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import globus_sdk

from ...ioc.domain.errors import GlobusError
from ...ioc.domain.experiment import Experiment
from ...ioc.domain.ports import SentFile, TransferProgress, TransferState
from .access import GlobusAccess
from .client import Clients, collection_path, describe_error, is_permanent
from .job import Job, JobFile
from .sent import ended_at, files_sent

log = logging.getLogger(__name__)


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
        self._state = JobFile(state_path)
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
        self._job: Job | None = None
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
            self._launch(Job(experiment.name, items, once))
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
        job = self._state.load()
        if job is None:
            return None
        if job.once and job.task_ids and job.task_ids[-1] in job.ended_ids:
            self._state.forget()  # the upload had ended; only the clean-up was missed
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
        try:
            self._note_last_task(job)
            with self._lock:
                tasks = [(task_id, ended) for task_id, ended in job.sent if ended > mark]
            sent, missing = files_sent(self._clients, tasks, str(self.storage_root), prefix)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            raise GlobusError(f"Globus: listing the files sent for {job.experiment}: {describe_error(error)}") from None
        if missing:
            log.warning("Globus transfer of %s: %s file(s) sent are gone from %s (or not regular files there)",
                        job.experiment, missing, storage)  # fmt: skip
        return sent

    def _note_last_task(self, job: Job) -> None:
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

    def _note_sent(self, job: Job, task_id: str, task: Mapping[str, Any] | globus_sdk.GlobusHTTPResponse) -> None:
        """Keep an ended task that moved files, with when it ended, for `sent_since` (the caller saves the job)."""
        if int(task.get("files_transferred") or 0) <= 0:
            return
        with self._lock:
            if all(task_id != sent for sent, _ in job.sent):
                job.sent.append((task_id, ended_at(task.get("completion_time"))))

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

    def _launch(self, job: Job) -> None:
        control = _Control()
        thread = threading.Thread(
            target=self._run, args=(job, control), name=f"globus-transfer-{job.experiment}", daemon=True
        )
        with self._lock:
            self._job, self._control, self._thread = job, control, thread
            self._progress = TransferProgress(state=TransferState.RUNNING)
        self._state.save(job)
        thread.start()

    def _run(self, job: Job, control: _Control) -> None:
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

    def _wind_up(self, job: Job, control: _Control, task_id: str | None, *, finished: bool) -> None:
        """After the loop: cancel the task when asked to; forget the job when it ended and is still the current one."""
        if control.cancel:
            self._cancel_task(job, task_id)
        if finished or control.cancel:
            with self._lock:
                current = self._job is job
            if current:
                self._state.forget()

    def _submit(self, job: Job) -> str | None:
        """Submit one pass over the source folders that exist; None when none does."""
        transfer = self._clients.transfer()
        items = [(source, destination) for source, destination in job.items if self._exists(transfer, source)]
        if not items:
            log.info("Globus transfer of %s: no source folder exists yet", job.experiment)
            return None
        if not job.submission_id:
            job.submission_id = str(transfer.get_submission_id()["value"])
            self._state.save(job)
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
        self._state.save(job)
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
        self, job: Job, task_id: str, task: Mapping[str, Any] | globus_sdk.GlobusHTTPResponse, control: _Control
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
            self._state.save(job)
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

    def _cancel_task(self, job: Job, task_id: str | None) -> None:
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


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 _,-]")
STOP_WAIT = 5.0  # seconds sent_since waits for a stopping transfer to cancel its task


def _source_path(source: str) -> str:
    """An absolute folder on the data host's collection, with a trailing slash."""
    path = PurePosixPath(source)
    if not path.is_absolute() or ".." in path.parts:
        raise GlobusError(f"Globus transfer: source {source!r} must be an absolute folder on the data host")
    return f"{path.as_posix().rstrip('/')}/"
