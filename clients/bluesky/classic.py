"""The IOC as a classic ophyd `Device` (pyepics), with the attributes and kinds of the ophyd-async device.

`DataManagement(prefix, name="dm")`: the proposal and experiment are configuration, the status, health
and transfer progress are read at every event, and each command is a `CommandSignal` whose `set(1)`
completes when the IOC has done it.

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


def _config(pv: str) -> Cpt:
    return Cpt(EpicsSignalRO, pv, string=True, auto_monitor=False, kind="config")


def _reading(pv: str, **kwargs: Any) -> Cpt:
    return Cpt(EpicsSignalRO, pv, auto_monitor=False, kind="normal", **kwargs)


class DataManagement(Device):
    """The IOC's PVs under `prefix` (e.g. `2bmb:DM:`), shaped like the ophyd-async `DataManagement`."""

    # The proposal and the selected experiment: read once per run, into the event descriptor.
    beamline = _config("Beamline")
    run_cycle = _config("Run")
    proposal_number = _config("ProposalNumber")
    proposal_title = Cpt(Utf8Text, "ProposalTitle", kind="config")
    esaf_number = _config("ESAFNumber")
    user_name = Cpt(Utf8Text, "UserName", kind="config")
    user_last_name = Cpt(Utf8Text, "UserLastName", kind="config")
    user_email = Cpt(Utf8Text, "UserEmail", kind="config")
    user_institution = Cpt(Utf8Text, "UserInstitution", kind="config")
    user_badge = _config("UserBadge")
    experiment_name = Cpt(Utf8Text, "ExperimentName", kind="config")
    data_directory = Cpt(Utf8Text, "DataDirectory", kind="config")
    storage_directory = Cpt(Utf8Text, "StorageDirectory", kind="config")
    # Status, health and the transfer: read at every event.
    status = Cpt(Utf8Text, "Status", kind="normal")
    scheduling_health = _reading("Scheduling:Health", string=True)
    dm_health = _reading("DM:Health", string=True)
    globus_health = _reading("Globus:Health", string=True)
    email_health = _reading("Email:Health", string=True)
    daq_state = _reading("DaqState", string=True)
    daq_files_done = _reading("Daq:FilesDone")
    daq_files_total = _reading("Daq:FilesTotal")
    daq_bytes = _reading("Daq:Bytes")
    daq_percent = _reading("Daq:Percent")
    daq_rate = _reading("Daq:Rate")
    daq_last_file = Cpt(Utf8Text, "Daq:LastFile", kind="normal")
    # Not read in runs: what a plan looks at or writes.
    status_severity = Cpt(EpicsSignalRO, "Status.SEVR", auto_monitor=False, kind="omitted")
    busy = Cpt(EpicsSignalRO, "Busy", auto_monitor=False, kind="omitted")
    last_command = Cpt(EpicsSignalRO, "LastCommand", string=True, auto_monitor=False, kind="omitted")
    last_error = Cpt(Utf8Text, "LastError", kind="omitted")
    select_name = Cpt(Utf8TextRW, "SelectName", kind="omitted")
    badges = Cpt(Utf8TextRW, "Badges", kind="omitted")
    tag_prefix = Cpt(Utf8TextRW, "TagPrefix", kind="omitted")
    # The commands: set(1) runs one and completes when it ends.
    refresh = Cpt(CommandSignal, "Refresh", kind="omitted")
    create = Cpt(CommandSignal, "Create", kind="omitted")
    select = Cpt(CommandSignal, "Select", kind="omitted")
    add_user = Cpt(CommandSignal, "AddUser", kind="omitted")
    remove_user = Cpt(CommandSignal, "RemoveUser", kind="omitted")
    email = Cpt(CommandSignal, "Email", kind="omitted")
    daq_start = Cpt(CommandSignal, "DaqStart", kind="omitted")
    daq_stop = Cpt(CommandSignal, "DaqStop", kind="omitted")
    upload = Cpt(CommandSignal, "Upload", kind="omitted")
    tag = Cpt(CommandSignal, "Tag", kind="omitted")
