"""What every concern's PV group shares: the supervisor its command PVs submit to."""

from __future__ import annotations

from caproto import AlarmSeverity, SkipWrite

from ...app.messages import Command
from ...app.reporting import Severity
from ...app.supervisor import Supervisor
from ..declarations import COMMAND_STATES
from ..pvs import GuardedPVGroup


def alarm(severity: Severity) -> AlarmSeverity:
    return AlarmSeverity(int(severity))


class Shows:
    """A group that shows one part of the supervisor's View. The supervisor publishes after every change, and
    most change one part: a group whose part is what it showed last has nothing to write (`unchanged`)."""

    _shown: object = None  # the part shown last (None: nothing yet)

    def unchanged(self, part: object) -> bool:
        """Whether `part` is what this group showed last; if not, it is remembered as shown."""
        if part is self._shown or (self._shown is not None and part == self._shown):
            return True
        self._shown = part
        return False


class CommandGroup(Shows, GuardedPVGroup):
    """A PV group of one concern: its declared PVs, and command PVs that submit a command to `supervisor`."""

    def __init__(self, prefix: str, *, supervisor: Supervisor, **kwargs):
        self.supervisor = supervisor
        super().__init__(prefix, **kwargs)

    async def put_refused(self, message: str) -> None:
        await self.supervisor.say(message, Severity.MAJOR)

    def command(self, name: str) -> Command:
        """The command a put of 1 on command PV `name` submits, with its argument PVs as they are now."""
        raise NotImplementedError(name)

    async def put_command(self, instance, value):
        """1 submits the PV's command (the put completes when it ends; it fails when the command does),
        the PV reading Busy meanwhile; 0 does nothing."""
        if value != COMMAND_STATES[1]:
            return value
        await self.submit(instance, self.command(instance.pvspec.name))
        return SkipWrite

    async def submit(self, instance, command: Command) -> None:
        accepted = False

        async def started() -> None:
            nonlocal accepted
            accepted = True
            cleared = {"status": 0, "severity": AlarmSeverity.NO_ALARM}  # the alarm a failed put left (caproto's)
            await instance.write(COMMAND_STATES[1], verify_value=False,
                                 **(cleared if instance.alarm.severity or instance.alarm.status else {}))  # fmt: skip

        try:
            await self.supervisor.submit(command, started)
        finally:
            if accepted:
                await instance.write(COMMAND_STATES[0], verify_value=False)
