"""One command at a time: Busy, Status and its severity, LastCommand, LastError, put completion.

A command PV's putter hands its use case (plain, blocking Python) to
`CommandEngine.run`, which runs it off the event loop and turns the outcome
into `Status`. A failed command raises `CommandFailed` out of the putter, so a
put with completion reports ECA_PUTFAIL; by then `Status` already says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from caproto import AlarmSeverity, AlarmStatus, SkipWrite

from .model import DMagicError, printable
from .pvs import COMMAND_STATES, GuardedPVGroup, publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a successful command did, in a sentence; `warning` makes Status MINOR."""

    message: str
    warning: bool = False


class CommandFailed(Exception):
    """Raised out of a command putter so the client's put fails."""


class CommandEngine:
    """Runs commands one at a time and reports each outcome on the status PVs."""

    def __init__(self, status_pvs, after_command: Callable[[], Awaitable[None]]):
        self._pvs = status_pvs  # the StatusGroup: status, busy, last_command, last_error
        self._after_command = after_command
        self.running: str | None = None

    async def run(self, name: str, channel, use_case: Callable[..., Outcome], *args) -> Outcome:
        """Run `use_case(*args)` in a worker thread as command `name` of PV `channel`."""
        if self.running is not None:
            message = f"{name} refused: {self.running} is running; try again when it ends"
            await self.report(message, AlarmSeverity.MAJOR_ALARM)
            raise CommandFailed(message)
        self.running = name
        try:
            await channel.write(
                COMMAND_STATES[1], verify_value=False, status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM
            )
            await publish(self._pvs.last_command, name, force=True)
            await publish(self._pvs.busy, "Busy")
            await self.report(f"{name} running", AlarmSeverity.NO_ALARM)
            try:
                outcome = await asyncio.to_thread(use_case, *args)
            except DMagicError as error:
                message = f"{name} failed: {error}"
                log.warning("%s", message)
            except Exception as error:  # a bug: say so on Status, keep the IOC alive
                log.exception("%s failed unexpectedly", name)
                message = f"{name} failed: internal error ({type(error).__name__}: {error}); see the IOC log"
            else:
                log.info("%s: %s", name, outcome.message)
                await self._finish()
                severity = AlarmSeverity.MINOR_ALARM if outcome.warning else AlarmSeverity.NO_ALARM
                await self.report(outcome.message, severity)
                return outcome
            await self._finish()
            await self.report(message, AlarmSeverity.MAJOR_ALARM)
            raise CommandFailed(message)
        finally:
            self.running = None
            await channel.write(COMMAND_STATES[0], verify_value=False)

    async def _finish(self) -> None:
        try:
            await self._after_command()
        finally:
            await publish(self._pvs.busy, "Idle")

    async def report(self, message: str, severity: AlarmSeverity) -> None:
        """Show `message` on Status (control characters escaped); a failure is also kept on LastError."""
        message = printable(message)
        await publish(self._pvs.status, message, severity, force=True)
        if severity == AlarmSeverity.MAJOR_ALARM:
            await publish(self._pvs.last_error, message)


class CommandGroup(GuardedPVGroup):
    """A PVGroup of one concern whose command PVs run use cases through the root's engine."""

    @property
    def root(self):
        group = self
        while group.parent is not None:
            group = group.parent
        return group

    @property
    def app(self):
        return self.root.app

    async def put_refused(self, message: str) -> None:
        await self.root.engine.report(message, AlarmSeverity.MAJOR_ALARM)

    async def run_command(self, instance, value, use_case: Callable[..., Outcome], *args):
        """The whole body of a command putter: 1 runs `use_case(*args)`, 0 does nothing."""
        if value != COMMAND_STATES[1]:
            return value
        await self.root.engine.run(instance.pvspec.name, instance, use_case, *args)
        return SkipWrite
