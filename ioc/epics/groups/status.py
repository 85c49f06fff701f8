"""Status PVs: the outcome of the last command, liveness, and the health of each outside system."""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from caproto import AlarmSeverity

from ..pvs import HEALTH_STATES, GuardedPVGroup, enum, long, string, text, update

HEALTH_SEVERITY = {"OK": AlarmSeverity.NO_ALARM, "Error": AlarmSeverity.MAJOR_ALARM, "Disabled": AlarmSeverity.NO_ALARM}
HEALTH_PVS = {"Scheduling": "scheduling_health", "DM": "dm_health", "Globus": "globus_health", "Email": "email_health",
              "Catalog": "catalog_health"}  # fmt: skip


def package_version() -> str:
    try:
        return version("dmagic-ioc")
    except PackageNotFoundError:
        return "unknown"


class StatusGroup(GuardedPVGroup):
    """What the last command did, whether one runs, and whether the outside systems answer.

    The engine writes these PVs; `health` is its record of each system's last contact, shown here.
    """

    def __init__(self, prefix: str, *, health: Mapping[str, str], **kwargs):
        self.health = health
        super().__init__(prefix, **kwargs)

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
    catalog_health = enum("Catalog:Health", HEALTH_STATES, "Last contact with SciCat; Disabled when scicat is off")

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
        """Show each system's Health from its last contact."""
        for system, attribute in HEALTH_PVS.items():
            state = self.health.get(system, "OK")
            await update(getattr(self, attribute), state, HEALTH_SEVERITY[state])
