"""Globus: read-only sharing of experiment folders, and Globus transfers.

`GlobusAccess` keeps one read-only access rule per user on the guest
collection that exposes `dm.storage_root`; `GlobusTransfer` moves raw data
with Globus tasks when `dm.transfer: globus`. Both act as a confidential
client (client credentials grant); the secret is read from its file on first
use and never logged.

Service URLs: globus-sdk resolves each service's base URL from the
`GLOBUS_SDK_ENVIRONMENT` (production, preview, ...) and, ahead of it,
`GLOBUS_SDK_SERVICE_URL_<SERVICE>` environment variables (`..._AUTH`,
`..._TRANSFER`, `..._APP`); tests point those at a local server.

Every method blocks on the network: the IOC calls them off the event loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import globus_sdk
from globus_sdk.scopes import AuthScopes, TransferScopes

from ..ioc.config import read_secret
from ..ioc.model import Experiment, ExperimentUser, GlobusError, InputError
from ..ioc.ports import TransferProgress

log = logging.getLogger(__name__)

APP_NAME = "dmagic-ioc"


# --------------------------------------------------------------------------
# Shared helpers


def collection_path(storage_root: Path | str, directory: Path | str) -> str:
    """`/gdata/dm/2BM/2026-03/exp` -> `/2026-03/exp/`: the folder as the guest
    collection rooted at `storage_root` sees it (leading and trailing slash)."""
    root, path = PurePosixPath(storage_root), PurePosixPath(directory)
    if not str(directory) or not path.is_absolute():
        raise GlobusError(f"Globus: {str(directory)!r} is not an absolute storage directory")
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise GlobusError(
            f"Globus: {path} is not under dm.storage_root {root}, which the guest collection exposes"
        ) from None
    if not relative.parts or ".." in relative.parts:
        raise GlobusError(f"Globus: refusing to share {path}: it must be a folder below dm.storage_root {root}")
    return f"/{relative.as_posix()}/"


def describe_error(error: Exception) -> str:
    """A short reason for Status: HTTP status, Globus code and message; never tokens."""
    if isinstance(error, globus_sdk.GlobusAPIError):
        message = " ".join((error.message or "").split())
        if len(message) > 160:
            message = message[:157] + "..."
        reason = f"{error.http_status} {_error_code(error)}"
        return f"{reason}: {message}" if message else reason
    if isinstance(error, globus_sdk.GlobusTimeoutError):
        return "no answer from Globus (timeout)"
    if isinstance(error, globus_sdk.NetworkError):
        return "cannot reach Globus (connection failed)"
    return type(error).__name__


def _error_code(error: globus_sdk.GlobusAPIError) -> str:
    """The Globus error code, or the OAuth `error` field Auth's token endpoint uses."""
    body = error.raw_json if isinstance(error.raw_json, dict) else {}
    return error.code or str(body.get("error") or "Error")


def _is_permanent(error: Exception) -> bool:
    """A 4xx other than 429 will not go away by retrying."""
    return isinstance(error, globus_sdk.GlobusAPIError) and 400 <= error.http_status < 500 and error.http_status != 429


class _Clients:
    """Auth and Transfer clients acting as the confidential client, built on first use."""

    def __init__(
        self,
        client_id: str,
        client_secret_file: Path | None,
        *,
        max_retries: int,
        timeout: float,
        auth_client: globus_sdk.AuthClient | None = None,
        transfer_client: globus_sdk.TransferClient | None = None,
    ):
        self._client_id = client_id
        self._secret_file = client_secret_file
        self._max_retries = max_retries
        self._timeout = timeout
        self._auth = auth_client
        self._transfer = transfer_client
        self._login: globus_sdk.ConfidentialAppAuthClient | None = None
        self._lock = threading.Lock()

    def _confidential(self) -> globus_sdk.ConfidentialAppAuthClient:
        if self._login is None:
            if self._secret_file is None:
                raise GlobusError("Globus: globus.client_secret_file is not set")
            try:
                secret = read_secret("globus.client_secret_file", Path(self._secret_file))
            except InputError as error:
                raise GlobusError(f"Globus: {error}") from None
            self._login = globus_sdk.ConfidentialAppAuthClient(
                self._client_id, secret, app_name=APP_NAME, **self._transport_options()
            )
        return self._login

    def _transport_options(self) -> dict[str, Any]:
        return {
            "transport": globus_sdk.transport.RequestsTransport(http_timeout=self._timeout),
            "retry_config": globus_sdk.transport.RetryConfig(max_retries=self._max_retries),
        }

    def auth(self) -> globus_sdk.AuthClient:
        with self._lock:
            if self._auth is None:
                authorizer = self._authorizer(AuthScopes.view_identities)
                self._auth = globus_sdk.AuthClient(
                    authorizer=authorizer, app_name=APP_NAME, **self._transport_options()
                )
            return self._auth

    def transfer(self) -> globus_sdk.TransferClient:
        with self._lock:
            if self._transfer is None:
                authorizer = self._authorizer(TransferScopes.all)
                self._transfer = globus_sdk.TransferClient(
                    authorizer=authorizer, app_name=APP_NAME, **self._transport_options()
                )
            return self._transfer

    def _authorizer(self, scope: Any) -> globus_sdk.ClientCredentialsAuthorizer:
        """Renewing client-credentials tokens; the first one is fetched now."""
        try:
            return globus_sdk.ClientCredentialsAuthorizer(self._confidential(), scope)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            if isinstance(error, globus_sdk.GlobusAPIError) and error.http_status in (400, 401, 403):
                self._login = None  # read the secret file again next time: it may have been fixed
                raise GlobusError(
                    f"Globus Auth refused the client credentials ({error.http_status} {_error_code(error)}); "
                    "check globus.client_id and globus.client_secret_file"
                ) from None
            raise GlobusError(f"Globus: cannot get a token: {describe_error(error)}") from None


# --------------------------------------------------------------------------
# Access rules


class GlobusAccess:
    """`ports.Access` on a Globus guest collection: one read-only rule per user and folder.

    The collection's root is `storage_root`; an experiment's folder is shared
    as its storage directory relative to that root. Users are found by e-mail
    (Globus Auth identity lookup with provisioning); users without an e-mail
    are left out. Globus sends no notification of its own: the IOC e-mails.
    """

    def __init__(
        self,
        collection_id: str,
        client_id: str,
        client_secret_file: Path | None,
        storage_root: Path | str,
        *,
        max_retries: int = 2,
        timeout: float = 30.0,
        auth_client: globus_sdk.AuthClient | None = None,
        transfer_client: globus_sdk.TransferClient | None = None,
    ):
        self.collection_id = collection_id
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.storage_root = PurePosixPath(storage_root)
        self.max_retries = max_retries
        self.timeout = timeout
        self._clients = _Clients(
            client_id,
            client_secret_file,
            max_retries=max_retries,
            timeout=timeout,
            auth_client=auth_client,
            transfer_client=transfer_client,
        )

    def path(self, experiment: Experiment) -> str:
        """The experiment's folder as the guest collection sees it: `/2026-03/exp/`."""
        if not experiment.storage_directory:
            raise GlobusError(f"Globus: experiment {experiment.name} has no storage directory")
        return collection_path(self.storage_root, experiment.storage_directory)

    def url(self, experiment: Experiment) -> str:
        """The Globus web app's file manager opened on the experiment's folder.

        '' when the folder cannot be shared (no storage directory, or one
        outside `storage_root`): publishing a selection must not fail on it;
        `grant` reports why.
        """
        try:
            path = self.path(experiment)
        except GlobusError as error:
            log.warning("no Globus link for %s: %s", experiment.name, error)
            return ""
        query = urllib.parse.urlencode(
            {"origin_id": self.collection_id, "origin_path": path}, quote_via=urllib.parse.quote
        )
        webapp = globus_sdk.config.get_webapp_url().rstrip("/")
        return f"{webapp}/file-manager?{query}"

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        """Ensure one read-only rule per user with an e-mail: {username: rule_id}.

        Existing rules (same identity, same path) are reused. A user that fails
        does not stop the others (a network failure stops the round); the
        GlobusError names every failed user and carries in `done` the rules of
        the users that succeeded ({username: rule_id}, made or reused), so the
        caller records them; a rerun completes the job without duplicating a rule.
        """
        path = self.path(experiment)
        with_email = [user for user in users if user.email.strip()]
        if not with_email:
            return {}
        transfer = self._clients.transfer()
        existing = self._existing_rules(transfer, path)
        granted: dict[str, str] = {}
        failed: dict[str, str] = {}
        for user in with_email:
            try:
                identity = self._identity(user)
                rule_id = existing.get(identity)
                if rule_id is None:
                    rule_id = self._add_rule(transfer, identity, path)
                    existing[identity] = rule_id
                    log.info("Globus: read access to %s for %s (rule %s)", path, user.username, rule_id)
                else:
                    log.info("Globus: %s already has read access to %s (rule %s)", user.username, path, rule_id)
                granted[user.username] = rule_id
            except globus_sdk.NetworkError as error:
                raise GlobusError(
                    f"Globus: {describe_error(error)}; access for {user.username} not given", done=dict(granted)
                ) from None
            except (globus_sdk.GlobusAPIError, GlobusError) as error:
                reason = describe_error(error) if isinstance(error, globus_sdk.GlobusAPIError) else str(error)
                log.warning("Globus: access for %s to %s failed: %s", user.username, path, reason)
                failed[user.username] = reason
        if failed:
            shown = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise GlobusError(
                f"Globus access to {path} failed for {', '.join(failed)} ({shown}); rerun to complete", done=granted
            )
        return granted

    def revoke(self, experiment: Experiment, rules: Mapping[str, str]) -> list[str]:
        """Delete exactly these rules; one already gone counts as removed."""
        if not rules:
            return []
        transfer = self._clients.transfer()
        removed: list[str] = []
        failed: dict[str, str] = {}
        for username, rule_id in rules.items():
            try:
                transfer.delete_endpoint_acl_rule(self.collection_id, rule_id)
                log.info("Globus: removed rule %s of %s on %s", rule_id, username, experiment.name)
            except globus_sdk.GlobusAPIError as error:
                if error.http_status != 404:
                    log.warning("Globus: removing rule %s of %s failed: %s", rule_id, username, describe_error(error))
                    failed[username] = f"rule {rule_id}: {describe_error(error)}"
                    continue
                log.info("Globus: rule %s of %s was already gone", rule_id, username)
            except globus_sdk.NetworkError as error:
                raise GlobusError(f"Globus: {describe_error(error)}; access of {username} not removed") from None
            removed.append(username)
        if failed:
            shown = "; ".join(f"{name} {reason}" for name, reason in failed.items())
            raise GlobusError(f"Globus: could not remove access of {', '.join(failed)} ({shown})")
        return removed

    def _call(self, what: str, action):
        """Run one request; turn any Globus failure into a GlobusError naming `what`."""
        try:
            return action()
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            raise GlobusError(f"Globus: cannot {what}: {describe_error(error)}") from None

    def _existing_rules(self, transfer: globus_sdk.TransferClient, path: str) -> dict[str, str]:
        """{identity id: rule id} of the identity rules already on `path`."""
        response = self._call(
            f"list the access rules of collection {self.collection_id}",
            lambda: transfer.endpoint_acl_list(self.collection_id),
        )
        rules: dict[str, str] = {}
        for rule in response:
            if rule.get("principal_type") == "identity" and _same_folder(rule.get("path", ""), path):
                rules.setdefault(rule["principal"], rule["id"])
        return rules

    def _identity(self, user: ExperimentUser) -> str:
        """The Globus identity id for the user's e-mail, provisioned if new."""
        email = user.email.strip()
        response = self._clients.auth().get_identities(usernames=[email], provision=True)
        for identity in response.get("identities", []):
            if identity.get("id") and str(identity.get("username", "")).lower() == email.lower():
                return identity["id"]
        raise GlobusError(f"no Globus identity for {email}")

    def _add_rule(self, transfer: globus_sdk.TransferClient, identity: str, path: str) -> str:
        rule = {
            "DATA_TYPE": "access",
            "principal_type": "identity",
            "principal": identity,
            "path": path,
            "permissions": "r",
        }
        response = transfer.add_endpoint_acl_rule(self.collection_id, rule)
        return response["access_id"]


def _same_folder(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# --------------------------------------------------------------------------
# Transfers


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
        self._clients = _Clients(
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
            self._progress = dataclasses.replace(self._progress, state="Stopped", rate_mb_s=0.0, message="")
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
            self._progress = TransferProgress(state="Running")
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
                        self._set(control, state="Stopped", rate_mb_s=0.0, message=message)
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
                finished = _is_permanent(error)
                self._set(
                    control, state="Error", rate_mb_s=0.0, message=f"Globus transfer of {job.experiment}: {reason}"
                )
            except Exception:
                log.exception("Globus transfer of %s: unexpected failure", job.experiment)
                message = f"Globus transfer of {job.experiment}: unexpected failure, see the IOC log"
                self._set(control, state="Error", rate_mb_s=0.0, message=message)
            if not finished:
                stop.wait(self.poll_interval)
        if control.cancel:
            self._cancel_task(job, task_id)
        if finished or control.cancel:
            with self._lock:
                current = self._job is job
            if current:
                self._forget_state()
        log.info("Globus transfer of %s: thread ends", job.experiment)

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

    def _record(self, job: _Job, task_id: str, task: Mapping[str, Any], control: _Control) -> tuple[bool, bool]:
        """Publish the task's state; return (task ended, job ended)."""
        status = task.get("status", "")
        files_total = int(task.get("files") or 0)
        files_done = int(task.get("files_transferred") or 0) + int(task.get("files_skipped") or 0)
        task_bytes = float(task.get("bytes_transferred") or 0)
        counts = {"files_done": files_done, "files_total": files_total}
        if status in ("SUCCEEDED", "FAILED"):
            job.bytes_before += task_bytes
            job.ended_ids.append(task_id)
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
            self._set(control, state="Stopped", rate_mb_s=0.0, message=summary, **counts)
            return True, True
        if status == "SUCCEEDED":
            self._set(control, state="Running", rate_mb_s=0.0, message="", **counts)
            return True, False
        if status == "FAILED":
            reason = (task.get("fatal_error") or {}).get("description") or task.get("nice_status") or "failed"
            message = f"Globus transfer of {job.experiment} failed (task {task_id}): {reason}"
            log.error("%s", message)
            self._set(control, state="Error", rate_mb_s=0.0, message=message, **counts)
            return True, True
        if status == "INACTIVE":
            message = f"Globus task {task_id} of {job.experiment} is paused: {task.get('nice_status') or 'inactive'}"
            self._set(control, state="Error", rate_mb_s=0.0, message=message, **counts)
            return False, False
        rate = float(task.get("effective_bytes_per_second") or 0) / 1e6
        self._set(control, state="Running", rate_mb_s=rate, message="", **counts)
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
        if self.state_path is None:
            return
        aside = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            aside.write_text(json.dumps(dataclasses.asdict(job), indent=1), encoding="utf-8")
            os.replace(aside, self.state_path)
        except OSError as error:
            log.warning("Globus transfer: cannot write %s: %s", self.state_path, error)

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


def _source_path(source: str) -> str:
    """An absolute folder on the data host's collection, with a trailing slash."""
    path = PurePosixPath(source)
    if not path.is_absolute() or ".." in path.parts:
        raise GlobusError(f"Globus transfer: source {source!r} must be an absolute folder on the data host")
    return f"{path.as_posix().rstrip('/')}/"
