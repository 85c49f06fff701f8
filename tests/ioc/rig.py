"""Driving the in-process rig (`rig` in tests/ioc/conftest.py): run a command PV, read Status.

Commands are written directly (caproto runs the putter inside `write`; a failed command raises
`CommandFailed` out of it); tests read `channel.value` and `channel.alarm.severity`.
"""

from __future__ import annotations

import pytest
from caproto import AlarmSeverity
from dmagic_ioc.ioc.app.reporting import CommandFailed

from ..fakes.ports import EXPERIMENT, BlockingSchedule

NO, MINOR, MAJOR = AlarmSeverity.NO_ALARM, AlarmSeverity.MINOR_ALARM, AlarmSeverity.MAJOR_ALARM
WAIT_SECONDS = 5.0


def blocking_schedule(rig) -> BlockingSchedule:
    """Put a schedule that holds the next command in its worker thread until the test releases it."""
    schedule = BlockingSchedule()
    rig.released.append(schedule.release)
    rig.services.adapters.scheduling = schedule
    return schedule


def status(rig) -> tuple[str, AlarmSeverity]:
    channel = rig.ioc.status.status
    return channel.value, channel.alarm.severity


async def run(channel) -> None:
    await channel.write("Busy")


async def fails(channel) -> str:
    with pytest.raises(CommandFailed) as error:
        await channel.write("Busy")
    return str(error.value)


def assert_idle(rig, command) -> None:
    assert command.value == "Done"
    assert rig.ioc.status.busy.value == "Idle"


async def refreshed_and_created(rig) -> None:
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    assert rig.ioc.experiment.experiment_name.value == EXPERIMENT
