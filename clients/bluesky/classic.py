"""The IOC as a classic ophyd `Device` (pyepics), with the attributes and kinds of the ophyd-async device.

`DataManagement(prefix, name="dm")` has a signal for every PV of the IOC: the proposal and experiment are
configuration, the status, health and the progress of the transfer and the catalogue are read at every
event, and each command is a `CommandSignal` whose `set(1)` completes when the IOC has done it.

pyepics needs two corrections here. It reads a char waveform's bytes as Latin-1 and writes non-ASCII
text as garbage: `Utf8Text`/`Utf8TextRW` read and write the bytes and decode or encode UTF-8 themselves.
It also reports a failed put as success: a command's status reads `Status.SEVR` once the put completes
and fails with `CommandFailed` (the `Status` text) when the IOC says MAJOR. All signals read the IOC
(no monitor) unless subscribed to: right after a command, a monitor can still hold the old value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, EpicsSignal, EpicsSignalRO
from ophyd.signal import EpicsSignalBase

from .commands import COMMAND_TIMEOUT, MAJOR, CommandFailed


def utf8_text(value: Any) -> str:
    """A char waveform's value as pyepics gives it (array, bytes or one int) as text, up to its first NUL."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    data = np.atleast_1d(np.asarray(value)).astype(np.uint8).tobytes()  # signed chars wrap to their bytes
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


class _Utf8(EpicsSignalBase):
    """Reads of a char waveform as UTF-8 text, from the IOC each time unless subscribed to."""

    def __init__(self, read_pv: str, **kwargs: Any) -> None:
        kwargs.setdefault("auto_monitor", False)
        super().__init__(read_pv, dtype="string", **kwargs)

    def _fix_type(self, value: Any) -> str:
        return utf8_text(value)

    def _read_changed(self, value: Any = None, **kwargs: Any) -> None:
        super()._read_changed(value=utf8_text(value), **kwargs)

    def describe(self) -> dict[str, dict[str, Any]]:
        description = super().describe()
        description[self.name]["dtype"] = "string"  # not the "array" ophyd infers from the bytes
        return description


class Utf8Text(_Utf8, EpicsSignalRO):
    """A read-only char waveform read as UTF-8 text."""


class Utf8TextRW(_Utf8, EpicsSignal):
    """A writable char waveform: reads decode UTF-8, writes (with put completion) send UTF-8 and a NUL."""

    def __init__(self, read_pv: str, **kwargs: Any) -> None:
        kwargs.setdefault("put_complete", True)
        super().__init__(read_pv, **kwargs)

    def put(self, value: Any, **kwargs: Any) -> None:
        if isinstance(value, str):
            value = np.frombuffer(value.encode("utf-8") + b"\0", dtype=np.uint8)
            kwargs["force"] = True  # no limits to check on text
        super().put(value, **kwargs)


class CommandSignal(EpicsSignal):
    """A command PV (bo Done/Busy): `set(1)` runs the command, the status completes when it ends and fails
    with `CommandFailed` when the IOC's `Status` is MAJOR then. Needs a parent with `status`/`status_severity`.
    """

    def __init__(self, read_pv: str, **kwargs: Any) -> None:
        kwargs.setdefault("put_complete", True)
        kwargs.setdefault("write_timeout", COMMAND_TIMEOUT)
        super().__init__(read_pv, **kwargs)

    def set(self, value: Any = 1, **kwargs: Any) -> DeviceStatus:
        if value != 1:
            raise ValueError(f"{self.name}: a command runs when written 1, not {value!r}")
        outcome = DeviceStatus(self)

        def ended(put: Any) -> None:
            error = put.exception()
            if error is None:
                error = self._failure()
            if error is None:
                outcome.set_finished()
            else:
                outcome.set_exception(error)

        super().set(1, **kwargs).add_callback(ended)
        return outcome

    def trigger(self) -> DeviceStatus:
        return self.set(1)

    def _failure(self) -> Exception | None:
        """What the IOC says about the command that just ended: CommandFailed when Status is MAJOR."""
        try:
            if self.parent.status_severity.get(use_monitor=False) < MAJOR:
                return None
            return CommandFailed(self.pvname, self.parent.status.get(use_monitor=False))
        except Exception as error:  # a lost connection: the outcome is unknown, say so
            return error


# Components by what a run does with them: config (read once per run), normal (at every event), omitted
# (what a plan reads or writes itself). Each reads the IOC, not a monitor.
def _config(pv: str, **kwargs: Any) -> Cpt:
    kwargs.setdefault("string", True)
    return Cpt(EpicsSignalRO, pv, auto_monitor=False, kind="config", **kwargs)


def _reading(pv: str, **kwargs: Any) -> Cpt:
    return Cpt(EpicsSignalRO, pv, auto_monitor=False, kind="normal", **kwargs)


def _looked_at(pv: str, **kwargs: Any) -> Cpt:
    return Cpt(EpicsSignalRO, pv, auto_monitor=False, kind="omitted", **kwargs)


def _setting(pv: str, **kwargs: Any) -> Cpt:
    return Cpt(EpicsSignal, pv, auto_monitor=False, put_complete=True, kind="omitted", **kwargs)


def _text(pv: str, kind: str = "omitted") -> Cpt:
    return Cpt(Utf8Text, pv, kind=kind)


def _text_setting(pv: str) -> Cpt:
    return Cpt(Utf8TextRW, pv, kind="omitted")


def _command(pv: str) -> Cpt:
    return Cpt(CommandSignal, pv, kind="omitted")


class DataManagement(Device):
    """Every PV of the IOC under `prefix` (e.g. `2bmb:DM:`), shaped like the ophyd-async `DataManagement`."""

    # The proposal and the selected experiment: read once per run, into the event descriptor.
    version = _config("Version")
    beamline = _config("Beamline")
    run_cycle = _config("Run")
    proposal_number = _config("ProposalNumber")
    proposal_title = _text("ProposalTitle", "config")
    proposal_type = _text("ProposalType", "config")
    proposal_start = _config("ProposalStart")
    proposal_end = _config("ProposalEnd")
    proprietary = _config("Proprietary", string=False)  # No/Yes as 0/1, as truthy as the ophyd-async bool
    mail_in = _config("MailIn", string=False)
    esaf_number = _config("ESAFNumber")
    esaf_doi = _text("ESAFDOINumber", "config")
    user_name = _text("UserName", "config")
    user_last_name = _text("UserLastName", "config")
    user_email = _text("UserEmail", "config")
    user_institution = _text("UserInstitution", "config")
    user_badge = _config("UserBadge")
    user_info_update = _config("UserInfoUpdate")
    experiment_name = _text("ExperimentName", "config")
    experiment_exists = _config("ExperimentExists", string=False)
    experiment_year_month = _config("ExperimentYearMonth")
    data_directory = _text("DataDirectory", "config")
    storage_directory = _text("StorageDirectory", "config")
    globus_url = _text("GlobusURL", "config")
    # Status, health, the transfer and the catalogue: read at every event.
    status = _text("Status", "normal")
    scheduling_health = _reading("Scheduling:Health", string=True)
    dm_health = _reading("DM:Health", string=True)
    globus_health = _reading("Globus:Health", string=True)
    email_health = _reading("Email:Health", string=True)
    catalog_health = _reading("Catalog:Health", string=True)
    daq_state = _reading("DaqState", string=True)
    daq_files_done = _reading("Daq:FilesDone")
    daq_files_total = _reading("Daq:FilesTotal")
    daq_bytes = _reading("Daq:Bytes")
    daq_percent = _reading("Daq:Percent")
    daq_rate = _reading("Daq:Rate")
    daq_last_file = _text("Daq:LastFile", "normal")
    catalog_pending = _reading("Catalog:Pending")
    catalog_last_dataset = _text("Catalog:LastDataset", "normal")
    # Not read in runs: what a plan looks at.
    status_severity = _looked_at("Status.SEVR")  # how a command learns that it failed
    busy = _looked_at("Busy")
    last_command = _looked_at("LastCommand", string=True)
    last_error = _text("LastError")
    heartbeat = _looked_at("Heartbeat")
    proposal_active = _looked_at("ProposalActive")
    schedule_proposal_number = _looked_at("Schedule:ProposalNumber", string=True)
    schedule_pi = _text("Schedule:PI")
    schedule_differs = _looked_at("Schedule:Differs")
    users_count = _looked_at("Users:Count")
    users_names = _text("Users:Names")
    users_badges = _text("Users:Badges")
    users_emails = _text("Users:Emails")
    experiment_users = _text("ExperimentUsers")
    experiments = _text("Experiments")
    emailed_users = _text("EmailedUsers")
    metadata_last = _text("Metadata:Last")  # JSON
    # Not read in runs: the settings, and the arguments a command reads when it runs.
    time_offset_days = _setting("TimeOffsetDays")
    refresh_period = _setting("RefreshPeriod")
    tag_prefix = _text_setting("TagPrefix")
    select_name = _text_setting("SelectName")
    badges = _text_setting("Badges")
    email_mode = _setting("EmailMode", string=True)
    delete_confirm = _text_setting("DeleteConfirm")
    manual_last_name = _text_setting("Manual:LastName")
    manual_first_name = _text_setting("Manual:FirstName")
    manual_institution = _text_setting("Manual:Institution")
    manual_email = _text_setting("Manual:Email")
    manual_title = _text_setting("Manual:Title")
    manual_gup = _setting("Manual:GUP")
    manual_badges = _text_setting("Manual:Badges")
    manual_start = _setting("Manual:Start", string=True)
    manual_end = _setting("Manual:End", string=True)
    # The commands: set(1) runs one and completes when it ends.
    refresh = _command("Refresh")
    tag = _command("Tag")
    create = _command("Create")
    create_manual = _command("CreateManual")
    select = _command("Select")
    add_user = _command("AddUser")
    remove_user = _command("RemoveUser")
    email = _command("Email")
    delete = _command("Delete")  # runs only when DeleteConfirm is ExperimentName
    daq_start = _command("DaqStart")
    daq_stop = _command("DaqStop")
    upload = _command("Upload")
    catalog = _command("Catalog")
