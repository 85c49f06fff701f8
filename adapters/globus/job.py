"""A Globus transfer job as the IOC asked for it (`Job`), and the state file that keeps it across a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...ioc.statefiles import disk_full, private_file

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One transfer the IOC asked for; what the state file keeps."""

    experiment: str
    items: list[tuple[str, str]]  # (source folder on the data host, destination folder on the collection)
    once: bool
    task_ids: list[str] = field(default_factory=list)
    ended_ids: list[str] = field(default_factory=list)  # tasks whose end (and bytes) is counted
    bytes_before: float = 0.0  # bytes moved by the ended tasks of this job
    submission_id: str = ""  # of the pass being submitted: a retry after a lost answer cannot make a second task
    sent: list[tuple[str, float]] = field(default_factory=list)  # (task, its end) of ended tasks that moved files


class JobFile:
    """The state file of `GlobusTransfer`: the job written at each change, so that `resume()` picks its last
    task up again after a restart (Globus tasks run on without the IOC). No `path`: nothing is kept."""

    def __init__(self, path: Path | None):
        self.path = path

    def save(self, job: Job) -> None:
        """Write the job to the state file: 0600 whatever the umask (it names folders and tasks), written
        aside, made durable, then renamed over the last one, so that a crash leaves one whole."""
        if self.path is None:
            return
        aside = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(aside)
            fd = os.open(aside, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "w", encoding="utf-8") as file:
                file.write(json.dumps(dataclasses.asdict(job), indent=1))
                file.flush()
                os.fsync(file.fileno())
            os.replace(aside, self.path)
        except OSError as error:
            reason = f"state_dir full ({error.strerror})" if disk_full(error) else str(error)
            log.warning("Globus transfer: cannot write %s: %s", self.path, reason)
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)

    def load(self) -> Job | None:
        """The job the file holds; None when there is none, or it cannot be read (logged)."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            return Job(
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
            log.warning("Globus transfer: ignoring unreadable state file %s: %s", self.path, error)
            return None

    def forget(self) -> None:
        """Remove the file: the job ended, or was stopped."""
        if self.path is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("Globus transfer: cannot remove %s: %s", self.path, error)
