"""Every PV the IOC serves, as data: name, kind, size, access, description, states, units, limits.

One table per concern (status, proposal, experiment, DAQ, catalogue), keyed by the attribute its PV
group gives it. Nothing here knows a protocol: `pvs.served` makes caproto pvproperties of them, and
`tools/` renders the EPICS database (`db_templates/`) and the PV table of the docs from the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..domain.ports import TransferState
from ..domain.text import LIST_BYTES, TEXT_BYTES, TITLE_BYTES

COMMAND_STATES = ("Done", "Busy")
NO_YES = ("No", "Yes")
HEALTH_STATES = ("OK", "Error", "Disabled")
BUSY_STATES = ("Idle", "Busy")
DAQ_STATES = tuple(state.value for state in TransferState)  # Stopped, Running, Error
EMAIL_MODES = ("New users", "All users")  # who Email writes to
MIN_REFRESH_PERIOD, MAX_REFRESH_PERIOD = 10.0, 86400.0

# Record types of the same PVs in EPICS: what `db_templates/` declares and `PV.RTYP` answers.
# EmailMode is an mbbo although it has two states today (room for more modes).
INTERFACE_RECORD_TYPES = {"EmailMode": "mbbo"}
_RECORDS = {  # kind -> (record type when read-only, when clients may write)
    "string": ("stringin", "stringout"),
    "text": ("waveform", "waveform"),
    "long": ("longin", "longout"),
    "double": ("ai", "ao"),
}


@dataclass(frozen=True)
class PV:
    """One PV as a client sees it, without the prefix."""

    name: str
    kind: str  # string | text (a UTF-8 char waveform) | enum | command | long | double
    doc: str
    rw: bool = False
    length: int = 0  # text: the bytes it holds, the NUL included (NELM)
    states: tuple[str, ...] = ()  # enum and command states, in order
    value: object = None  # the value before anything is written
    precision: int = 0  # double: digits shown
    units: str = ""
    limits: tuple[float, float] = (0.0, 0.0)  # writable numbers: the range a write must fall in
    autosave: bool = True  # a writable setting survives a restart (a command or a confirmation never does)

    @property
    def record(self) -> str:
        """The EPICS record type of the same PV: enums by their number of states, commands are bo."""
        if self.name in INTERFACE_RECORD_TYPES:
            return INTERFACE_RECORD_TYPES[self.name]
        if self.kind == "command":
            return "bo"
        if self.kind == "enum":
            return ("b" if len(self.states) == 2 else "mbb") + ("o" if self.rw else "i")
        return _RECORDS[self.kind][self.rw]


def text(name: str, length: int, doc: str, *, rw: bool = False, autosave: bool = True) -> PV:
    """A char waveform read as a string (`caget -S`), UTF-8, up to `length` bytes."""
    return PV(name, "text", doc, rw, length=length, value="", autosave=autosave)


def string(name: str, doc: str, *, rw: bool = False) -> PV:
    """A DBR_STRING PV (40 bytes)."""
    return PV(name, "string", doc, rw, value="")


def enum(name: str, states: tuple[str, ...], doc: str, *, rw: bool = False) -> PV:
    return PV(name, "enum", doc, rw, states=states, value=states[0])


def long(name: str, doc: str, *, rw: bool = False, limits: tuple[int, int] = (0, 0)) -> PV:
    """A long; a writable one takes only whole numbers within `limits` (low, high)."""
    return PV(name, "long", doc, rw, value=0, limits=limits)


def double(name: str, doc: str, *, rw: bool = False, precision: int = 2, units: str = "",
           limits: tuple[float, float] = (0.0, 0.0)) -> PV:  # fmt: skip
    """A double; a writable one takes only finite numbers within `limits` (low, high)."""
    return PV(name, "double", doc, rw, value=0.0, precision=precision, units=units, limits=limits)


def command(name: str, doc: str) -> PV:
    """A bo Done/Busy command PV: write 1 to run it; it reads 1 while it runs."""
    return PV(name, "command", doc, True, states=COMMAND_STATES, value=COMMAND_STATES[0])


STATUS = {
    "status": text("Status", 512, "Last human-readable result; MINOR on warning, MAJOR on failure"),
    "busy": enum("Busy", BUSY_STATES, "A command is running"),
    "last_command": string("LastCommand", "Name of the last command started"),
    "last_error": text("LastError", 512, "Last failure message, kept until the next failure"),
    "heartbeat": long("Heartbeat", "+1 every second while the IOC lives"),
    "version": string("Version", "Package version"),
    "scheduling_health": enum("Scheduling:Health", HEALTH_STATES, "Last contact with the scheduling system"),
    "dm_health": enum("DM:Health", HEALTH_STATES, "Last contact with data management"),
    "globus_health": enum("Globus:Health", HEALTH_STATES, "Last contact with Globus"),
    "email_health": enum("Email:Health", HEALTH_STATES, "Last contact with the SMTP server"),
    "catalog_health": enum("Catalog:Health", HEALTH_STATES, "Last contact with SciCat; Disabled when scicat is off"),
}

PROPOSAL = {
    "beamline_name": string("Beamline", "Beamline id"),
    "run": string("Run", "Run containing now + offset, e.g. 2026-3"),
    "time_offset_days": double(
        "TimeOffsetDays", "Look this many days ahead (+) or back (-)", rw=True, units="d", limits=(-3660, 3660)
    ),
    "refresh_period": double(
        "RefreshPeriod",
        "Seconds between automatic refreshes; 0 = off",
        rw=True,
        precision=0,
        units="s",
        limits=(0, MAX_REFRESH_PERIOD),
    ),
    "proposal_active": enum("ProposalActive", NO_YES, "A beamtime is scheduled now; No carries MINOR"),
    "proposal_number": string("ProposalNumber", "GUP number"),
    "proposal_title": text("ProposalTitle", TITLE_BYTES + 1, "Full proposal title"),
    "proposal_type": text("ProposalType", TEXT_BYTES + 1, "e.g. General User"),
    "proposal_start": string("ProposalStart", "Beamtime start, ISO 8601 with UTC offset"),
    "proposal_end": string("ProposalEnd", "Beamtime end, ISO 8601 with UTC offset"),
    "proprietary": enum("Proprietary", NO_YES, "Proprietary proposal"),
    "mail_in": enum("MailIn", NO_YES, "Mail-in proposal"),
    "esaf_number": string("ESAFNumber", "ESAF number, empty if none"),
    "esaf_doi_number": text("ESAFDOINumber", TEXT_BYTES + 1, "ESAF DOI when the backend knows it"),
    "experiment_year_month": string("ExperimentYearMonth", "YYYY-MM of the beamtime start"),
    "user_name": text("UserName", TEXT_BYTES + 1, "PI first name"),
    "user_last_name": text("UserLastName", TEXT_BYTES + 1, "PI last name"),
    "user_email": text("UserEmail", TEXT_BYTES + 1, "PI e-mail"),
    "user_institution": text("UserInstitution", TEXT_BYTES + 1, "PI institution"),
    "user_badge": string("UserBadge", "PI badge"),
    "user_info_update": string("UserInfoUpdate", "ISO 8601 time of the last refresh"),
    "schedule_proposal_number": string("Schedule:ProposalNumber", "GUP the schedule shows now (empty: none)"),
    "schedule_pi": text("Schedule:PI", 256, "PI of the beamtime the schedule shows now"),
    "schedule_differs": enum("Schedule:Differs", NO_YES, "Schedule shows another beamtime; Yes = MINOR"),
    "users_count": long("Users:Count", "Experimenters on the proposal"),
    "users_names": text("Users:Names", LIST_BYTES + 1, "Experimenters' names, comma-separated, PI first"),
    "users_badges": text("Users:Badges", LIST_BYTES + 1, "Experimenters' badges, same order"),
    "users_emails": text("Users:Emails", LIST_BYTES + 1, "Experimenters' e-mails, same order"),
    "tag_prefix": text("TagPrefix", 256, "IOC prefix that Tag writes to", rw=True),
    "refresh": command("Refresh", "Read the current proposal from the scheduling system and publish it"),
    "tag": command("Tag", "Write the user-info PVs into the IOC at TagPrefix"),
}

EXPERIMENT = {
    "experiment_name": text("ExperimentName", 256, "The selected experiment"),
    "experiment_exists": enum("ExperimentExists", NO_YES, "It exists in DM"),
    "data_directory": text("DataDirectory", 1024, "Where detectors write: {data_top_dir}/{experiment}"),
    "storage_directory": text("StorageDirectory", 1024, "The experiment's directory in DM storage"),
    "globus_url": text("GlobusURL", 1024, "Link to the data, when Globus is enabled"),
    "experiment_users": text("ExperimentUsers", 8192, "Usernames with access, comma-separated"),
    "experiments": text("Experiments", 16384, "The station's experiments, newest first, newline-separated"),
    "emailed_users": text("EmailedUsers", 8192, "Usernames already e-mailed for this experiment"),
    "badges": text("Badges", 1024, "Argument of AddUser/RemoveUser: comma-separated badges", rw=True),
    "select_name": text("SelectName", 256, "Argument of Select", rw=True),
    "delete_confirm": text(
        "DeleteConfirm", 256, "Must equal ExperimentName for Delete to run", rw=True, autosave=False
    ),
    "email_mode": enum("EmailMode", EMAIL_MODES, "Who Email writes to", rw=True),
    "manual_last_name": text("Manual:LastName", 256, "PI last name of a manual experiment (default Staff)", rw=True),
    "manual_first_name": text("Manual:FirstName", 256, "PI first name of a manual experiment", rw=True),
    "manual_institution": text("Manual:Institution", 256, "PI institution of a manual experiment", rw=True),
    "manual_email": text("Manual:Email", 256, "PI e-mail of a manual experiment", rw=True),
    "manual_title": text("Manual:Title", 256, "Title of a manual experiment", rw=True),
    "manual_gup": long(
        "Manual:GUP", "Proposal number of a manual experiment (0 = none)", rw=True, limits=(0, 2**31 - 1)
    ),
    "manual_badges": text(
        "Manual:Badges", 1024, "Users of a manual experiment; the first is the Manual:* person", rw=True
    ),
    "manual_start": string("Manual:Start", "YYYY-MM-DD; empty = first of this month", rw=True),
    "manual_end": string("Manual:End", "YYYY-MM-DD; empty = 14 days after the start", rw=True),
    "create": command("Create", "Create the DM experiment for the current proposal and select it"),
    "create_manual": command("CreateManual", "Create an experiment from the Manual:* PVs and select it"),
    "select": command("Select", "Select the experiment named in SelectName"),
    "add_user": command("AddUser", "Give the badges in Badges access"),
    "remove_user": command("RemoveUser", "Take access from the badges in Badges"),
    "email": command("Email", "Send the data-access message to the experiment's users (EmailMode)"),
    "delete": command("Delete", "Delete the selected experiment (needs DeleteConfirm)"),
}

DAQ = {
    "daq_state": enum("DaqState", DAQ_STATES, "Transfer state; Error carries MAJOR"),
    "files_done": long("Daq:FilesDone", "Files transferred"),
    "files_total": long("Daq:FilesTotal", "Files seen"),
    "bytes_done": double("Daq:Bytes", "Bytes sent, counted during each copy", precision=0),
    "percent": double("Daq:Percent", "% of ready bytes sent (100: caught up)", precision=1),
    "rate": double("Daq:Rate", "MB/s over the last few seconds", precision=1),
    "last_file": text("Daq:LastFile", 1024, "Last file transferred"),
    "daq_start": command("DaqStart", "Start continuous transfer of the raw and _rec directories"),
    "daq_stop": command("DaqStop", "Stop the continuous transfer"),
    "upload": command("Upload", "One-shot transfer of the files present now"),
}

CATALOG = {
    "last_dataset": text("Catalog:LastDataset", 256, "pid of the last dataset created"),
    "pending": long("Catalog:Pending", "Datasets waiting to be sent to the catalogue"),
    "metadata_last": text("Metadata:Last", 16384, "JSON of the last metadata snapshot"),
    "catalog": command("Catalog", "Make a dataset now of the files sent since the last one"),
}

GROUPS: Mapping[str, Mapping[str, PV]] = {
    "status": STATUS, "proposal": PROPOSAL, "experiment": EXPERIMENT, "daq": DAQ, "catalog": CATALOG,
}  # fmt: skip


def every_pv() -> list[PV]:
    """Every PV, in the order the groups serve them."""
    return [pv for table in GROUPS.values() for pv in table.values()]
