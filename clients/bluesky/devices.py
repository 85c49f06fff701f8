"""The IOC as an ophyd-async device: proposal and experiment as configuration, status and transfer as readings.

`DataManagement(prefix)` has a signal for every PV of the IOC. It reads the proposal and experiment once
per run (configuration), the status, the health of each outside system and the progress of the transfer
and the catalogue at every event, and runs the commands:
`await dm.create.set(1)` (or `bps.mv(dm.create, 1)`) completes when the IOC has done it, and fails
with `CommandFailed` carrying the IOC's `Status` text when the IOC could not.

Text PVs are UTF-8 char waveforms: signals of type `str` read them through ophyd-async's Channel
Access backend as DBR_CHAR_STR, which aioca decodes (and encodes on writes) as UTF-8.

A prefix may name the protocol, as ophyd-async's signals take it: `pva://2bmb:DM:` reads and writes every PV
over PV Access (the IOC serves the same names there; text as UTF-8 strings; p4p, the `pva` extra), `ca://`
or none over Channel Access.
"""

from __future__ import annotations

import asyncio
import functools

from aioca import CANothing, caput
from bluesky.protocols import Movable, Triggerable
from ophyd_async.core import (
    AsyncStatus,
    Device,
    Reference,
    SignalR,
    StandardReadable,
    StandardReadableFormat,
    StrictEnum,
)
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from .commands import COMMAND_TIMEOUT, ECA_PUTFAIL, PVA_NO_WRITE_ACCESS, CommandFailed

CA, PVA = "ca://", "pva://"


class DaqState(StrictEnum):
    STOPPED = "Stopped"
    RUNNING = "Running"
    ERROR = "Error"


class Health(StrictEnum):
    OK = "OK"
    ERROR = "Error"
    DISABLED = "Disabled"


class EmailMode(StrictEnum):
    NEW_USERS = "New users"
    ALL_USERS = "All users"


class Command(Device, Movable[int], Triggerable):
    """One command PV (a bo Done/Busy): `set(1)` or `trigger()` runs it and completes when the command ends.

    The put waits for completion; when the IOC fails the command (ECA_PUTFAIL; over PVA, an error other
    than no write access) the status fails with `CommandFailed` and the text of `Status`, which the IOC
    has written by then. The put goes through aioca (p4p for a `pva://` name) itself: ophyd-async's
    `SignalW.set` (0.21) loses a put's failure, since aioca's CANothing is false and the retry wrapper
    around the put takes a false exception for none.
    """

    def __init__(self, pv: str, status: SignalR[str], name: str = "", timeout: float = COMMAND_TIMEOUT) -> None:
        self.busy = epics_signal_r(bool, pv)  # True while the command runs
        self._pv = pv
        self._status = Reference(status)
        self._timeout = timeout
        super().__init__(name)

    @AsyncStatus.wrap
    async def set(self, value: int = 1, timeout: float | None = None) -> None:
        if value != 1:
            raise ValueError(f"{self.name}: a command runs when written 1, not {value!r}")
        if self._pv.startswith(PVA):
            await self._put_over_pva(timeout or self._timeout)
            return
        try:
            await caput(self._pv.removeprefix(CA), 1, wait=True, timeout=timeout or self._timeout)
        except CANothing as error:
            if error.errorcode == ECA_PUTFAIL:
                raise CommandFailed(self._pv, await self._status().get_value(cached=False)) from error
            raise RuntimeError(str(error)) from error  # not the command's outcome: no write access, no IOC

    async def _put_over_pva(self, timeout: float) -> None:
        from p4p.client.asyncio import RemoteError

        try:
            await asyncio.wait_for(pva_context().put(self._pv.removeprefix(PVA), 1), timeout)
        except RemoteError as error:
            if str(error).startswith(PVA_NO_WRITE_ACCESS):
                raise RuntimeError(str(error)) from error
            raise CommandFailed(self._pv, await self._status().get_value(cached=False)) from error
        except asyncio.TimeoutError as error:  # no IOC, or a command longer than the timeout
            raise RuntimeError(f"{self._pv}: no reply in {timeout:g} s") from error

    def trigger(self) -> AsyncStatus:
        return self.set(1)


@functools.cache
def pva_context():
    """The p4p client of the commands put over PV Access (one for the process, as ophyd-async's own)."""
    from p4p.client.asyncio import Context

    return Context("pva")


class DataManagement(StandardReadable):
    """Every PV of the IOC under `prefix` (e.g. `2bmb:DM:`, or `pva://2bmb:DM:` over PV Access), with the attribute
    names the classic device has too.

    Configuration (read once per run) describes the proposal and the selected experiment; readings (at every
    event) are the status, health and progress that change during a run; the rest is what a plan reads or
    writes itself: the commands, their arguments, the settings and the longer lists.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        # The proposal and the selected experiment: read once per run, into the event descriptor.
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.version = epics_signal_r(str, prefix + "Version")
            self.beamline = epics_signal_r(str, prefix + "Beamline")
            self.run_cycle = epics_signal_r(str, prefix + "Run")
            self.proposal_number = epics_signal_r(str, prefix + "ProposalNumber")
            self.proposal_title = epics_signal_r(str, prefix + "ProposalTitle")
            self.proposal_type = epics_signal_r(str, prefix + "ProposalType")
            self.proposal_start = epics_signal_r(str, prefix + "ProposalStart")
            self.proposal_end = epics_signal_r(str, prefix + "ProposalEnd")
            self.proprietary = epics_signal_r(bool, prefix + "Proprietary")
            self.mail_in = epics_signal_r(bool, prefix + "MailIn")
            self.esaf_number = epics_signal_r(str, prefix + "ESAFNumber")
            self.esaf_doi = epics_signal_r(str, prefix + "ESAFDOINumber")
            self.user_name = epics_signal_r(str, prefix + "UserName")
            self.user_last_name = epics_signal_r(str, prefix + "UserLastName")
            self.user_email = epics_signal_r(str, prefix + "UserEmail")
            self.user_institution = epics_signal_r(str, prefix + "UserInstitution")
            self.user_badge = epics_signal_r(str, prefix + "UserBadge")
            self.user_info_update = epics_signal_r(str, prefix + "UserInfoUpdate")
            self.experiment_name = epics_signal_r(str, prefix + "ExperimentName")
            self.experiment_exists = epics_signal_r(bool, prefix + "ExperimentExists")
            self.experiment_year_month = epics_signal_r(str, prefix + "ExperimentYearMonth")
            self.data_directory = epics_signal_r(str, prefix + "DataDirectory")
            self.storage_directory = epics_signal_r(str, prefix + "StorageDirectory")
            self.globus_url = epics_signal_r(str, prefix + "GlobusURL")
        # Status, health, the transfer and the catalogue: read fresh at every event.
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.status = epics_signal_r(str, prefix + "Status")
            self.scheduling_health = epics_signal_r(Health, prefix + "Scheduling:Health")
            self.dm_health = epics_signal_r(Health, prefix + "DM:Health")
            self.globus_health = epics_signal_r(Health, prefix + "Globus:Health")
            self.email_health = epics_signal_r(Health, prefix + "Email:Health")
            self.catalog_health = epics_signal_r(Health, prefix + "Catalog:Health")
            self.daq_state = epics_signal_r(DaqState, prefix + "DaqState")
            self.daq_files_done = epics_signal_r(int, prefix + "Daq:FilesDone")
            self.daq_files_total = epics_signal_r(int, prefix + "Daq:FilesTotal")
            self.daq_bytes = epics_signal_r(float, prefix + "Daq:Bytes")
            self.daq_percent = epics_signal_r(float, prefix + "Daq:Percent")
            self.daq_rate = epics_signal_r(float, prefix + "Daq:Rate")
            self.daq_last_file = epics_signal_r(str, prefix + "Daq:LastFile")
            self.catalog_pending = epics_signal_r(int, prefix + "Catalog:Pending")
            self.catalog_last_dataset = epics_signal_r(str, prefix + "Catalog:LastDataset")
        # Not read in runs: what a plan looks at.
        self.busy = epics_signal_r(bool, prefix + "Busy")
        self.last_command = epics_signal_r(str, prefix + "LastCommand")
        self.last_error = epics_signal_r(str, prefix + "LastError")
        self.heartbeat = epics_signal_r(int, prefix + "Heartbeat")
        self.proposal_active = epics_signal_r(bool, prefix + "ProposalActive")
        self.schedule_proposal_number = epics_signal_r(str, prefix + "Schedule:ProposalNumber")
        self.schedule_pi = epics_signal_r(str, prefix + "Schedule:PI")
        self.schedule_differs = epics_signal_r(bool, prefix + "Schedule:Differs")
        self.users_count = epics_signal_r(int, prefix + "Users:Count")
        self.users_names = epics_signal_r(str, prefix + "Users:Names")
        self.users_badges = epics_signal_r(str, prefix + "Users:Badges")
        self.users_emails = epics_signal_r(str, prefix + "Users:Emails")
        self.experiment_users = epics_signal_r(str, prefix + "ExperimentUsers")
        self.experiments = epics_signal_r(str, prefix + "Experiments")
        self.emailed_users = epics_signal_r(str, prefix + "EmailedUsers")
        self.metadata_last = epics_signal_r(str, prefix + "Metadata:Last")  # JSON
        # Not read in runs: the settings, and the arguments a command reads when it runs.
        self.time_offset_days = epics_signal_rw(float, prefix + "TimeOffsetDays")
        self.refresh_period = epics_signal_rw(float, prefix + "RefreshPeriod")
        self.tag_prefix = epics_signal_rw(str, prefix + "TagPrefix")
        self.select_name = epics_signal_rw(str, prefix + "SelectName")
        self.badges = epics_signal_rw(str, prefix + "Badges")
        self.email_mode = epics_signal_rw(EmailMode, prefix + "EmailMode")
        self.delete_confirm = epics_signal_rw(str, prefix + "DeleteConfirm")
        self.manual_last_name = epics_signal_rw(str, prefix + "Manual:LastName")
        self.manual_first_name = epics_signal_rw(str, prefix + "Manual:FirstName")
        self.manual_institution = epics_signal_rw(str, prefix + "Manual:Institution")
        self.manual_email = epics_signal_rw(str, prefix + "Manual:Email")
        self.manual_title = epics_signal_rw(str, prefix + "Manual:Title")
        self.manual_gup = epics_signal_rw(int, prefix + "Manual:GUP")
        self.manual_badges = epics_signal_rw(str, prefix + "Manual:Badges")
        self.manual_start = epics_signal_rw(str, prefix + "Manual:Start")
        self.manual_end = epics_signal_rw(str, prefix + "Manual:End")
        # The commands: set(1) runs one and completes when it ends.
        self.refresh = Command(prefix + "Refresh", self.status)
        self.tag = Command(prefix + "Tag", self.status)
        self.create = Command(prefix + "Create", self.status)
        self.create_manual = Command(prefix + "CreateManual", self.status)
        self.select = Command(prefix + "Select", self.status)
        self.add_user = Command(prefix + "AddUser", self.status)
        self.remove_user = Command(prefix + "RemoveUser", self.status)
        self.email = Command(prefix + "Email", self.status)
        self.delete = Command(prefix + "Delete", self.status)  # runs only when DeleteConfirm is ExperimentName
        self.daq_start = Command(prefix + "DaqStart", self.status)
        self.daq_stop = Command(prefix + "DaqStop", self.status)
        self.upload = Command(prefix + "Upload", self.status)
        self.catalog = Command(prefix + "Catalog", self.status)
        super().__init__(name=name)
