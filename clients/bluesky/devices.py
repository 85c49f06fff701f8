"""The IOC as an ophyd-async device: proposal and experiment as configuration, status and transfer as readings.

`DataManagement(prefix)` reads the proposal and experiment once per run (configuration), the status,
the health of each outside system and the transfer's progress at every event, and runs the commands:
`await dm.create.set(1)` (or `bps.mv(dm.create, 1)`) completes when the IOC has done it, and fails
with `CommandFailed` carrying the IOC's `Status` text when the IOC could not.

Text PVs are UTF-8 char waveforms: signals of type `str` read them through ophyd-async's Channel
Access backend as DBR_CHAR_STR, which aioca decodes (and encodes on writes) as UTF-8.
"""

from __future__ import annotations

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

from .commands import COMMAND_TIMEOUT, ECA_PUTFAIL, CommandFailed


class DaqState(StrictEnum):
    STOPPED = "Stopped"
    RUNNING = "Running"
    ERROR = "Error"


class Health(StrictEnum):
    OK = "OK"
    ERROR = "Error"
    DISABLED = "Disabled"


class Command(Device, Movable[int], Triggerable):
    """One command PV (a bo Done/Busy): `set(1)` or `trigger()` runs it and completes when the command ends.

    The put waits for completion; when the IOC fails the command (ECA_PUTFAIL) the status fails with
    `CommandFailed` and the text of `Status`, which the IOC has written by then. The put goes through
    aioca itself: ophyd-async's `SignalW.set` (0.21) loses a put's failure, since aioca's CANothing is
    false and the retry wrapper around the put takes a false exception for none.
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
        try:
            await caput(self._pv, 1, wait=True, timeout=timeout or self._timeout)
        except CANothing as error:
            if error.errorcode == ECA_PUTFAIL:
                raise CommandFailed(self._pv, await self._status().get_value(cached=False)) from error
            raise RuntimeError(str(error)) from error  # not the command's outcome: no write access, no IOC

    def trigger(self) -> AsyncStatus:
        return self.set(1)


class DataManagement(StandardReadable):
    """The IOC's PVs under `prefix` (e.g. `2bmb:DM:`), with the attribute names the classic device has too."""

    def __init__(self, prefix: str, name: str = "") -> None:
        # The proposal and the selected experiment: read once per run, into the event descriptor.
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.beamline = epics_signal_r(str, prefix + "Beamline")
            self.run_cycle = epics_signal_r(str, prefix + "Run")
            self.proposal_number = epics_signal_r(str, prefix + "ProposalNumber")
            self.proposal_title = epics_signal_r(str, prefix + "ProposalTitle")
            self.esaf_number = epics_signal_r(str, prefix + "ESAFNumber")
            self.user_name = epics_signal_r(str, prefix + "UserName")
            self.user_last_name = epics_signal_r(str, prefix + "UserLastName")
            self.user_email = epics_signal_r(str, prefix + "UserEmail")
            self.user_institution = epics_signal_r(str, prefix + "UserInstitution")
            self.user_badge = epics_signal_r(str, prefix + "UserBadge")
            self.experiment_name = epics_signal_r(str, prefix + "ExperimentName")
            self.data_directory = epics_signal_r(str, prefix + "DataDirectory")
            self.storage_directory = epics_signal_r(str, prefix + "StorageDirectory")
        # Status, health and the transfer: read fresh at every event.
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.status = epics_signal_r(str, prefix + "Status")
            self.scheduling_health = epics_signal_r(Health, prefix + "Scheduling:Health")
            self.dm_health = epics_signal_r(Health, prefix + "DM:Health")
            self.globus_health = epics_signal_r(Health, prefix + "Globus:Health")
            self.email_health = epics_signal_r(Health, prefix + "Email:Health")
            self.daq_state = epics_signal_r(DaqState, prefix + "DaqState")
            self.daq_files_done = epics_signal_r(int, prefix + "Daq:FilesDone")
            self.daq_files_total = epics_signal_r(int, prefix + "Daq:FilesTotal")
            self.daq_bytes = epics_signal_r(float, prefix + "Daq:Bytes")
            self.daq_percent = epics_signal_r(float, prefix + "Daq:Percent")
            self.daq_rate = epics_signal_r(float, prefix + "Daq:Rate")
            self.daq_last_file = epics_signal_r(str, prefix + "Daq:LastFile")
        # Not read in runs: what a plan looks at or writes.
        self.busy = epics_signal_r(bool, prefix + "Busy")
        self.last_command = epics_signal_r(str, prefix + "LastCommand")
        self.last_error = epics_signal_r(str, prefix + "LastError")
        self.select_name = epics_signal_rw(str, prefix + "SelectName")
        self.badges = epics_signal_rw(str, prefix + "Badges")
        self.tag_prefix = epics_signal_rw(str, prefix + "TagPrefix")
        # The commands: set(1) runs one and completes when it ends.
        self.refresh = Command(prefix + "Refresh", self.status)
        self.create = Command(prefix + "Create", self.status)
        self.select = Command(prefix + "Select", self.status)
        self.add_user = Command(prefix + "AddUser", self.status)
        self.remove_user = Command(prefix + "RemoveUser", self.status)
        self.email = Command(prefix + "Email", self.status)
        self.daq_start = Command(prefix + "DaqStart", self.status)
        self.daq_stop = Command(prefix + "DaqStop", self.status)
        self.upload = Command(prefix + "Upload", self.status)
        self.tag = Command(prefix + "Tag", self.status)
        super().__init__(name=name)
