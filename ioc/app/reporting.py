"""What the status PVs say: the rules for `Status`, `LastError` and each system's Health, with no PVs.

A warning stays on `Status` with its severity until the next command says otherwise: news of what a
command started (the end of its upload) never lowers the severity that command raised (`notify`'s
`of_command`). The supervisor alone changes a `Report`; the PV groups show it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from ..domain.errors import DiskFull, DMagicError, DMError
from ..domain.ports import TransferState
from ..domain.text import printable
from ..statefiles import causes, disk_full
from .services import SYSTEMS

log = logging.getLogger(__name__)


class Severity(IntEnum):
    """An EPICS alarm severity, as the status PVs carry it (the same numbers as Channel Access's)."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2


HEALTH_SEVERITY = {"OK": Severity.NO_ALARM, "Error": Severity.MAJOR, "Disabled": Severity.NO_ALARM}
TRANSFER_SEVERITY = {TransferState.STOPPED: Severity.NO_ALARM, TransferState.RUNNING: Severity.NO_ALARM,
                     TransferState.ERROR: Severity.MAJOR}  # fmt: skip


class CommandFailed(Exception):
    """Raised out of a command's put so the client's put fails; `Status` already says why."""


def first_health(settings) -> dict[str, str]:
    """Each system's Health before any contact: OK, or Disabled when the config turns it off."""
    enabled = {"Globus": settings.globus.enabled, "Email": settings.email.enabled, "Catalog": settings.scicat.enabled}
    return {system: "OK" if enabled.get(system, True) else "Disabled" for system in SYSTEMS}


@dataclass
class Report:
    """The status PVs' values: Status with its severity, LastError, Busy, LastCommand, each Health."""

    health: dict[str, str]
    status: str = ""
    severity: Severity = Severity.NO_ALARM
    said: int = 0  # counts what Status said: the same sentence said again is a new update for monitors
    last_error: str = ""
    busy: bool = False
    last_command: str = ""
    started: int = 0  # counts commands started: LastCommand is written again for the same name
    held: set[str] = field(default_factory=set)  # systems whose Health stays Error until restart (lost state)
    command_severity: Severity = Severity.NO_ALARM  # the highest severity the last command and its news raised

    def say(self, message: str, severity: Severity) -> None:
        """Show `message` on Status (control characters escaped); a failure is also kept on LastError."""
        self.status, self.severity, self.said = printable(message), severity, self.said + 1
        if severity == Severity.MAJOR:
            self.last_error = self.status

    def start(self, name: str) -> None:
        """A command starts: LastCommand, Busy, 'name running'."""
        self.last_command, self.started, self.command_severity = name, self.started + 1, Severity.NO_ALARM
        self.busy = True
        self.say(f"{name} running", Severity.NO_ALARM)

    def news(self, message: str, severity: Severity, *, of_command: str = "") -> bool:
        """News from background work (a transfer error, the end of an upload). False when not said now.

        News of what command `of_command` started, while it is the last command started, is said with
        no lower a severity than that command's outcome and news raised: the end of an upload that
        warned stays a warning. Once a later command has said its outcome, such news replaces it only
        when more severe (a transfer's error): a script reads the outcome of its own last command."""
        if self.busy:
            return False
        if of_command and of_command == self.last_command:
            severity = self.command_severity = max(severity, self.command_severity)
        elif of_command and severity <= self.severity:
            log.info("%s (not on Status: %s has said its outcome since %s)", message, self.last_command, of_command)
            return True
        self.say(message, severity)
        return True

    def shows(self, message: str) -> bool:
        """Whether Status already says `message` (a command's outcome that carried it): no news then."""
        return printable(message) in self.status

    def hold_error(self, system: str) -> None:
        """Show `system`'s Health as Error until restart, whatever later contacts say (its state was lost)."""
        self.held.add(system)
        self.health[system] = "Error"

    def take(self, contacts: list[tuple[str, bool]]) -> None:
        """The contacts with the outside systems, into the Health states."""
        for system, ok in contacts:
            self.health[system] = "OK" if ok and system not in self.held else "Error"


def failure_text(name: str, error: Exception, settings) -> tuple[str, bool]:
    """What Status says when work `name` raised `error`, and whether a full disk caused it.

    A refusal or a service's failure (a DMagicError) and a full disk are said as they are, logged as one
    line; anything else is a bug: said as an internal error, logged with its traceback."""
    full = disk_full_text(error, settings)
    if full or isinstance(error, DMagicError):
        failure = f"{name} failed: {full or error}"
        log.warning("%s", failure)
        return failure, bool(full)
    log.exception("%s failed unexpectedly", name, exc_info=error)
    return f"{name} failed: internal error ({type(error).__name__}: {error}); see the IOC log", False


def disk_full_text(error: Exception, settings) -> str:
    """`error` in a sentence for Status when a full disk (or spent quota) caused it, else ''.

    The adapters of the state files say so themselves (DiskFull, "state_dir full: ..."); any
    other no-space error is named by the configured folder that holds the file it hit. One
    with no file name is SQLite's (its files are all in state_dir) or, out of a DM backend,
    the storage's (a registry that is full raised DiskFull).
    """
    if any(isinstance(cause, DiskFull) for cause in causes(error)):
        return str(error)
    full = disk_full(error)
    if full is None:
        return ""
    filename = getattr(full, "filename", None)
    if filename:
        path = Path(os.fsdecode(filename))
        roots = {"state_dir": settings.ioc.state_dir, "storage": settings.dm.storage_root,
                 "data_top_dir": settings.dm.data_top_dir}  # fmt: skip
        place = next((place for place, root in roots.items() if path.is_relative_to(root)), "disk")
    elif not isinstance(full, OSError):
        place = "state_dir"
    else:
        place = "storage" if isinstance(error, DMError) else "disk"
    return f"{place} full: {error}"
