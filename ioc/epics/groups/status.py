"""Status PVs: the outcome of the last command, liveness, and the health of each outside system."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from ...app.jobs import View
from ...app.reporting import HEALTH_SEVERITY
from ...app.services import SYSTEMS
from ..declarations import BUSY_STATES, STATUS
from ..pvs import GuardedPVGroup, update
from .base import Shows, alarm

HEALTH_PVS = {system: f"{system.lower()}_health" for system in SYSTEMS}  # the attribute of each system's Health


def package_version() -> str:
    try:
        return version("dmagic-ioc")
    except PackageNotFoundError:
        return "unknown"


class StatusGroup(Shows, GuardedPVGroup, pvs=STATUS):
    """What the last command did, whether one runs, and whether the outside systems answer (the
    supervisor's report, shown), and a heartbeat."""

    _said = -1  # the report's count of what Status said, as last shown
    _started = -1  # its count of commands started

    async def startup_heartbeat(self, instance, async_lib):
        """Tick once a second on a fixed schedule (no drift)."""
        next_tick = time.monotonic()
        while True:
            next_tick += 1.0
            await async_lib.library.sleep(max(0.0, next_tick - time.monotonic()))
            await instance.write(instance.value + 1)

    async def show(self, view: View) -> None:
        """Show the report: a sentence said again is written again (monitors see it), as is LastCommand."""
        report = view.report
        if self.unchanged(report):
            return
        await update(self.last_command, report.last_command, force=report.started != self._started)
        self._started = report.started
        await update(self.status, report.status, alarm(report.severity), force=report.said != self._said)
        self._said = report.said
        await update(self.last_error, report.last_error)
        await update(self.busy, BUSY_STATES[report.busy])  # after Status: Idle means the outcome is there
        for system, attribute in HEALTH_PVS.items():
            state = report.health.get(system, "OK")
            await update(getattr(self, attribute), state, alarm(HEALTH_SEVERITY[state]))
