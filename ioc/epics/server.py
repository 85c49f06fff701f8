"""The IOC: the concerns' PV groups under one prefix, showing what the supervisor publishes; autosave; access."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from caproto import AlarmSeverity

from ..app.jobs import Inputs
from ..app.reporting import Severity
from ..app.supervisor import Supervisor
from .access import restrict_writes
from .autosave import Autosave, settings_channels
from .groups.catalog import CatalogGroup
from .groups.daq import DaqGroup
from .groups.experiment import ExperimentGroup
from .groups.proposal import ProposalGroup
from .groups.status import StatusGroup, package_version
from .pvs import serve_record_fields, update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartupProblem:
    """Something wrong found at start (an unreadable state file): Status says it with MAJOR severity."""

    message: str
    system: str = ""  # a system whose Health PV then stays at Error until restart ("DM" for the registry)


class DMagicIOC:
    """dmagic-ioc: the beamline's scheduling and data management on PVs.

    Each group subscribes to what the supervisor publishes (the status group last: Busy goes Idle after
    the rest shows the outcome); `pvdb` holds them all.
    """

    def __init__(self, prefix: str, *, supervisor: Supervisor, startup_problems: Sequence[StartupProblem] = ()):
        self.supervisor = supervisor
        self.startup_problems = tuple(startup_problems)
        self.status = StatusGroup(prefix)
        self.proposal = ProposalGroup(prefix, supervisor=supervisor)
        self.experiment = ExperimentGroup(prefix, supervisor=supervisor)
        self.daq = DaqGroup(prefix, supervisor=supervisor)
        self.catalog = CatalogGroup(prefix, supervisor=supervisor)
        for group in (self.proposal, self.experiment, self.catalog, self.daq, self.status):
            supervisor.subscribe(group.show)
        supervisor.inputs = self.inputs
        self.pvdb = {**self.status.pvdb, **self.proposal.pvdb, **self.experiment.pvdb, **self.daq.pvdb,
                     **self.catalog.pvdb}  # fmt: skip
        settings = supervisor.services.settings
        self.autosave = Autosave(settings.ioc.state_dir / "autosave.json", settings_channels(self.pvdb),
                                 say=self.say)  # fmt: skip
        self.write_access = restrict_writes(self.pvdb, settings.ioc.access)  # None: anyone may write

    def inputs(self) -> Inputs:
        """The settings PVs the supervisor's timers read."""
        return Inputs(self.proposal.time_offset_days.value, self.proposal.refresh_period.value)

    async def say(self, message: str, severity: AlarmSeverity) -> bool:
        return await self.supervisor.tell(message, Severity(int(severity)))

    async def startup(self, async_lib) -> None:
        """Config defaults, then autosaved values; then the supervisor reads the selection and runs, and
        autosave runs.

        State that could not be read (a registry or autosave file kept aside) makes the startup
        Status MAJOR, saying what was done; the IOC serves on.
        """
        settings = self.supervisor.services.settings
        await serve_record_fields(self.pvdb)
        await update(self.status.version, package_version())
        await update(self.proposal.beamline_name, settings.beamline.name)
        await self.proposal.refresh_period.write(settings.scheduling.refresh_period, verify_value=False)
        await self.proposal.tag_prefix.write(settings.tag.prefix, verify_value=False)
        problems = list(self.startup_problems)  # found before serving: a registry kept aside, say
        kept = await self.autosave.restore()
        if kept:
            problems.append(StartupProblem(kept))
        started = f"dmagic-ioc {package_version()} started"
        await async_lib.library.gather(
            self.supervisor.run(started, [(problem.message, problem.system) for problem in problems]),
            self._autosave(async_lib),
        )

    async def _autosave(self, async_lib) -> None:
        """Autosave runs once the start is said: a failure to save is said after it, not hidden by it."""
        await self.supervisor.ready.wait()
        await self.autosave.run(async_lib)
