"""Status PVs: the outcome of the last command, liveness, and the health of each outside system."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from caproto import AlarmSeverity

from .commands import CommandGroup
from .pvs import HEALTH_STATES, enum, long, publish, string, text

HEALTH_SEVERITY = {"OK": AlarmSeverity.NO_ALARM, "Error": AlarmSeverity.MAJOR_ALARM, "Disabled": AlarmSeverity.NO_ALARM}


def package_version() -> str:
    try:
        return version("dmagic-ioc")
    except PackageNotFoundError:
        return "unknown"


class StatusGroup(CommandGroup):
    """What the last command did, whether one runs, and whether the outside systems answer."""

    status = text("Status", 512, "Last human-readable result; MINOR on warning, MAJOR on failure")
    busy = enum("Busy", ("Idle", "Busy"), "A command is running")
    last_command = string("LastCommand", "Name of the last command started")
    last_error = text("LastError", 512, "Last failure message, kept until the next failure")
    heartbeat = long("Heartbeat", "+1 every second while the IOC lives")
    version = string("Version", "Package version", value=package_version())
    scheduling_health = enum("Scheduling:Health", HEALTH_STATES, "Last contact with the scheduling system")
    dm_health = enum("DM:Health", HEALTH_STATES, "Last contact with data management")
    globus_health = enum("Globus:Health", HEALTH_STATES, "Last contact with Globus")
    email_health = enum("Email:Health", HEALTH_STATES, "Last contact with the SMTP server")

    @heartbeat.startup
    async def heartbeat(self, instance, async_lib):
        """Tick once a second on a fixed schedule (no drift), and show health changes."""
        next_tick = time.monotonic()
        while True:
            next_tick += 1.0
            await async_lib.library.sleep(max(0.0, next_tick - time.monotonic()))
            await instance.write(instance.value + 1)
            await self.show()

    async def show(self) -> None:
        """Publish the Health PVs from the last contact with each system."""
        health = self.app.published.health
        for system, channel in (
            ("Scheduling", self.scheduling_health),
            ("DM", self.dm_health),
            ("Globus", self.globus_health),
            ("Email", self.email_health),
        ):
            state = health.get(system, "OK")
            await publish(channel, state, HEALTH_SEVERITY[state])
