"""The one way into the use cases, and the one writer of the status PVs.

A command putter hands its use case to `Engine.command`; the automatic
refresh and startup hand theirs to `Engine.background`; the transfer's
progress is read through `Engine.query`. Use cases are plain blocking Python:
the engine runs each in a worker thread, never two commands or background
jobs at a time (so the use cases need no locks), then it alone turns the
outcome into `Status`, `LastError`, `Busy`, `LastCommand` and the `*:Health`
PVs, and has every PV group show what changed, before a put completes.

A warning stays on `Status` with its severity until the next command says
otherwise: news of what a command started (the end of its upload) never
lowers the severity that command raised (`notify`'s `of_command`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from caproto import AlarmSeverity, AlarmStatus

from .domain.model import DiskFull, DMagicError, DMError, printable
from .epics.pvs import COMMAND_STATES, update
from .statefiles import causes, disk_full
from .usecases import SYSTEMS, Beamline, Outcome

log = logging.getLogger(__name__)


def first_health(settings) -> dict[str, str]:
    """Each system's Health before any contact: OK, or Disabled when the config turns it off."""
    enabled = {"Globus": settings.globus.enabled, "Email": settings.email.enabled, "Catalog": settings.scicat.enabled}
    return {system: "OK" if enabled.get(system, True) else "Disabled" for system in SYSTEMS}


class CommandFailed(Exception):
    """Raised out of a command putter so the client's put fails; `Status` already says why."""


class Engine:
    """Runs the use cases one at a time, off the event loop, and shows their outcomes."""

    def __init__(self, beamline: Beamline, status_pvs, health: dict[str, str]):
        self.beamline = beamline
        self._pvs = status_pvs  # the StatusGroup: status, busy, last_command, last_error
        self.health = health  # system -> OK/Error/Disabled, changed here only (the StatusGroup shows it)
        self._held: set[str] = set()  # systems whose Health stays Error until restart (lost state)
        self._one_at_a_time = asyncio.Lock()
        self.running: str | None = None  # the command running now
        self.ready = asyncio.Event()  # set once startup has restored settings and read the selection
        self.show: Callable[[], Awaitable[None]] | None = None  # every group shows the use cases' state
        self._last_query_error = ""
        self._last_command = ""  # the last command started, and the highest severity it and its news raised
        self._last_severity = AlarmSeverity.NO_ALARM

    # ------------------------------------------------------------------ ways in

    async def command(self, name: str, channel, use_case: Callable[..., Outcome], *args) -> Outcome:
        """Run command `name` of PV `channel` (None: a command the IOC gives itself): the whole body of a
        command putter. Raises CommandFailed."""
        if self.running is not None:
            message = f"{name} refused: {self.running} is running; try again when it ends"
            await self.report(message, AlarmSeverity.MAJOR_ALARM)
            raise CommandFailed(message)
        self.running = name
        self._last_command, self._last_severity = name, AlarmSeverity.NO_ALARM
        try:
            if channel is not None:
                await channel.write(COMMAND_STATES[1], verify_value=False, status=AlarmStatus.NO_ALARM,
                                    severity=AlarmSeverity.NO_ALARM)  # fmt: skip
            await update(self._pvs.last_command, name, force=True)
            await update(self._pvs.busy, "Busy")
            await self.report(f"{name} running", AlarmSeverity.NO_ALARM)
            async with self._one_at_a_time:
                outcome, failure = await self._run(name, use_case, *args)
            try:
                await self._show()
            finally:
                await update(self._pvs.busy, "Idle")
            if outcome is None:
                self._last_severity = AlarmSeverity.MAJOR_ALARM
                await self.report(failure, AlarmSeverity.MAJOR_ALARM)
                raise CommandFailed(failure)
            self._last_severity = _severity(outcome)
            await self.report(outcome.message, self._last_severity)
            return outcome
        finally:
            self.running = None
            if channel is not None:
                await channel.write(COMMAND_STATES[0], verify_value=False)

    async def background(self, name: str, use_case: Callable[..., Outcome], *args, say_failure: bool = True,
                         say_outcome: bool = False, of_command: str = "",
                         at_least: AlarmSeverity = AlarmSeverity.NO_ALARM) -> str:  # fmt: skip
        """Background work (the automatic refresh, startup, resuming a transfer): after a running command,
        never beside it. Its failure goes to `Status` when `say_failure` (and its outcome, when not empty,
        when `say_outcome`, with at least the severity `at_least`) unless a command has started
        meanwhile; the Health PVs show its contacts in any case. `of_command` as for `notify`.
        Returns '' when it succeeded, else why it failed."""
        async with self._one_at_a_time:
            outcome, failure = await self._run(name, use_case, *args)
        await self._show()
        if outcome is None:
            if say_failure:
                await self.notify(failure, AlarmSeverity.MAJOR_ALARM, of_command=of_command)
        elif say_outcome and outcome.message:
            severity = max(_severity(outcome), at_least)
            # news never hides a failure still on Status (the startup's, say): LastError would keep it alone
            if severity == AlarmSeverity.MAJOR_ALARM or self._pvs.status.alarm.severity != AlarmSeverity.MAJOR_ALARM:
                await self.notify(outcome.message, severity, of_command=of_command)
        return failure

    async def query(self, name: str, read: Callable, *args):
        """A read that changes nothing the commands change (the transfer's progress), beside them.

        Returns None when it failed unexpectedly (a bug): said once on Status and in the log, not at
        every poll, and the caller's loop goes on."""
        try:
            result = await asyncio.to_thread(read, *args)
        except Exception as error:
            if repr(error) != self._last_query_error:
                self._last_query_error = repr(error)
                if full := self._disk_full(error):
                    message = f"{name} failed: {full}"
                    log.warning("%s", message)
                else:
                    log.exception("%s failed unexpectedly", name)
                    message = f"{name} failed: internal error ({error}); see the IOC log"
                await self.report(message, AlarmSeverity.MAJOR_ALARM)
            return None
        finally:
            self._take_contacts()
        self._last_query_error = ""
        return result

    # ------------------------------------------------------------------ status

    async def report(self, message: str, severity: AlarmSeverity) -> None:
        """Show `message` on Status (control characters escaped); a failure is also kept on LastError."""
        message = printable(message)
        await update(self._pvs.status, message, severity, force=True)
        if severity == AlarmSeverity.MAJOR_ALARM:
            await update(self._pvs.last_error, message)

    async def notify(self, message: str, severity: AlarmSeverity, *, of_command: str = "") -> bool:
        """News from background work (a transfer error, the end of an upload): on Status unless a
        command runs, whose outcome it must not hide. False when it was not shown (say it again later).

        News of what command `of_command` started, while it is the last command started, is said with
        no lower a severity than that command's outcome and news raised: the end of an upload that
        warned stays a warning. Once a later command has said its outcome, such news replaces it only
        when more severe (a transfer's error): a script reads the outcome of its own last command."""
        if self.running is not None:
            return False
        if of_command and of_command == self._last_command:
            severity = self._last_severity = max(severity, self._last_severity)
        elif of_command and severity <= self._pvs.status.alarm.severity:
            log.info("%s (not on Status: %s has said its outcome since %s)", message, self._last_command, of_command)
            return True
        await self.report(message, severity)
        return True

    def shows(self, message: str) -> bool:
        """Whether Status already says `message` (a command's outcome that carried it): no news then."""
        return printable(message) in str(self._pvs.status.value)

    def hold_error(self, system: str) -> None:
        """Show `system`'s Health as Error until restart, whatever later contacts say (its state was lost)."""
        self._held.add(system)
        self.health[system] = "Error"

    # ------------------------------------------------------------------ inside

    async def _run(self, name: str, use_case: Callable[..., Outcome], *args) -> tuple[Outcome | None, str]:
        """Run `use_case(*args)` in a worker thread: (outcome, '') or (None, why it failed).

        A full disk is no bug: it is said as one ("state_dir full: ...", "storage full: ..."), and
        DM's Health shows Error until a DM call works again."""
        full = ""
        try:
            outcome = await asyncio.to_thread(use_case, *args)
        except Exception as error:
            full = self._disk_full(error)
            if full or isinstance(error, DMagicError):
                failure = f"{name} failed: {full or error}"
                log.warning("%s", failure)
            else:  # a bug: say so on Status, keep the IOC alive
                log.exception("%s failed unexpectedly", name)
                failure = f"{name} failed: internal error ({type(error).__name__}: {error}); see the IOC log"
        else:
            if outcome.message:  # background work with nothing to say says nothing
                log.info("%s: %s", name, outcome.message)
            return outcome, ""
        finally:
            self._take_contacts()
        if full:
            self.health["DM"] = "Error"  # after the contacts: a DM call that worked before the disk filled says OK
        return None, failure

    def _disk_full(self, error: Exception) -> str:
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
        settings = self.beamline.settings
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

    def _take_contacts(self) -> None:
        """The use cases' contacts with the outside systems, into the Health PVs' states (on the loop)."""
        for system, ok in self.beamline.contacts():
            self.health[system] = "OK" if ok and system not in self._held else "Error"

    async def _show(self) -> None:
        if self.show is not None:
            await self.show()


def _severity(outcome: Outcome) -> AlarmSeverity:
    """How an outcome is said on Status: MINOR when it warns."""
    return AlarmSeverity.MINOR_ALARM if outcome.warning else AlarmSeverity.NO_ALARM
