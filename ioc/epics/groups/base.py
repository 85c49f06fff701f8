"""What every concern's PV group shares: the engine and the use cases, given when it is built."""

from __future__ import annotations

from collections.abc import Callable

from caproto import AlarmSeverity, SkipWrite

from ...engine import Engine
from ...usecases import Beamline, Outcome
from ..pvs import COMMAND_STATES, GuardedPVGroup


class CommandGroup(GuardedPVGroup):
    """A PV group of one concern, whose command PVs run use cases of `beamline` through `engine`."""

    def __init__(self, prefix: str, *, engine: Engine, beamline: Beamline, **kwargs):
        self.engine = engine
        self.beamline = beamline
        super().__init__(prefix, **kwargs)

    async def put_refused(self, message: str) -> None:
        await self.engine.report(message, AlarmSeverity.MAJOR_ALARM)

    async def run_command(self, instance, value, use_case: Callable[..., Outcome], *args):
        """The whole body of a command putter: 1 runs `use_case(*args)`, 0 does nothing."""
        if value != COMMAND_STATES[1]:
            return value
        await self.engine.command(instance.pvspec.name, instance, use_case, *args)
        return SkipWrite
