"""What goes through the supervisor: commands (from PVs, or the IOC's own) and the events handlers raise.

A command is a frozen dataclass carrying its inputs (the argument PVs as the putter read them);
`name` is what `Status`, `LastCommand` and the log call it (the command PV's name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .state import ManualRequest


@dataclass(frozen=True)
class Command:
    name: ClassVar[str] = ""


# ---------------------------------------------------------------- the command PVs


@dataclass(frozen=True)
class Refresh(Command):
    name: ClassVar[str] = "Refresh"
    offset_days: float = 0.0


@dataclass(frozen=True)
class Tag(Command):
    name: ClassVar[str] = "Tag"
    prefix: str = ""


@dataclass(frozen=True)
class Create(Command):
    name: ClassVar[str] = "Create"


@dataclass(frozen=True)
class CreateManual(Command):
    name: ClassVar[str] = "CreateManual"
    request: ManualRequest = ManualRequest()


@dataclass(frozen=True)
class Select(Command):
    name: ClassVar[str] = "Select"
    experiment: str = ""


@dataclass(frozen=True)
class AddUser(Command):
    name: ClassVar[str] = "AddUser"
    badges: str = ""


@dataclass(frozen=True)
class RemoveUser(Command):
    name: ClassVar[str] = "RemoveUser"
    badges: str = ""


@dataclass(frozen=True)
class Email(Command):
    name: ClassVar[str] = "Email"
    everyone: bool = False


@dataclass(frozen=True)
class Delete(Command):
    name: ClassVar[str] = "Delete"
    confirm: str = ""


@dataclass(frozen=True)
class DaqStart(Command):
    name: ClassVar[str] = "DaqStart"


@dataclass(frozen=True)
class DaqStop(Command):
    name: ClassVar[str] = "DaqStop"


@dataclass(frozen=True)
class Upload(Command):
    name: ClassVar[str] = "Upload"


@dataclass(frozen=True)
class Catalog(Command):
    name: ClassVar[str] = "Catalog"


# ---------------------------------------------------------------- the IOC's own work


@dataclass(frozen=True)
class ReadSelection(Command):
    """At start: the selected experiment, as the registry has it."""

    name: ClassVar[str] = "reading the selected experiment"


@dataclass(frozen=True)
class RefreshAutomatic(Command):
    """The periodic refresh (RefreshPeriod): says only what is new."""

    name: ClassVar[str] = "automatic Refresh"
    offset_days: float = 0.0


@dataclass(frozen=True)
class FollowSchedule(Command):
    """dm.follow_schedule: a new beamtime runs: its experiment, as Create makes it."""

    name: ClassVar[str] = "Create (automatic)"
    beamtime: str = ""  # the beamtime's key


@dataclass(frozen=True)
class ResumeTransfer(Command):
    """After a restart, the transfer that was running before."""

    name: ClassVar[str] = "resuming the transfer"


@dataclass(frozen=True)
class UploadEnded(Command):
    """An Upload's transfer ended by itself: its dataset."""

    name: ClassVar[str] = "cataloguing the upload"


# ---------------------------------------------------------------- events a handler raises


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class BeamtimeToFollow(Event):
    """dm.follow_schedule: the schedule shows a beamtime (key) whose experiment is to be made by itself."""

    beamtime: str
