"""What the IOC needs from the outside world: one protocol per system.

Adapters in `adapters/` implement these as plain classes; tests pass fakes.
Every method here may block (network, disk, sqlite): the IOC calls them off
the event loop. They raise `model.ServiceError` subclasses (or `InputError`)
with a message fit for the Status PV.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Protocol

from .beamtime import Beamtime, Run
from .experiment import Experiment, ExperimentUser
from .people import Person


class SchedulingSource(Protocol):
    """The beamline's schedule: the file backend or the APS scheduling service."""

    def runs(self) -> list[Run]:
        """Every run the source knows."""

    def beamtimes(self, run: Run) -> list[Beamtime]:
        """The beamtimes of this beamline in `run`."""


class DataManagement(Protocol):
    """A DM system: the embedded registry (`local`) or the APS DM system (`aps`)."""

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        """Create it (directories, registry) or find the existing one: (experiment, created).

        Idempotent: on an existing experiment, completes whatever a failed
        earlier attempt left undone and changes nothing else. Users are added
        separately through `add_users`. Made, but without a unix group it names
        (one that does not exist): `model.PartialAccess` with the result in `done`.
        """

    def get_experiment(self, name: str) -> Experiment | None: ...

    def list_experiments(self) -> list[str]:
        """The station's experiment names, newest first."""

    def station_experiments(self) -> list[Experiment]:
        """The station's experiments as DM keeps them (name, title, GUP and ESAF where it knows them,
        start, year-month, storage), newest first; users' contact details are not read. Create looks
        there for an experiment made for its beamtime under another name (by DMagic, or by hand)."""

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Give access; return the usernames that did not have it before.

        When some users cannot be added, the others still are; the DMError raised
        then carries the added usernames in `done`.
        """

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Take access; return the usernames that had it."""

    def delete_experiment(self, name: str) -> str:
        """Delete it; return a sentence saying exactly what was removed."""

    def esaf(self, esaf: str) -> tuple[list[Person], str]:
        """ESAF experimenters and DOI; ([], '') where the backend has no ESAF data."""


class TransferState(Enum):
    STOPPED = "Stopped"
    RUNNING = "Running"
    ERROR = "Error"


@dataclass(frozen=True)
class TransferProgress:
    """A snapshot of the data transfer for the `Daq:*` PVs."""

    state: TransferState = TransferState.STOPPED
    files_done: int = 0
    files_total: int = 0
    bytes_done: float = 0.0  # in storage, and what is written of the files being copied
    bytes_total: float = 0.0  # of the files sent or ready to send; 0 where the transfer does not know it
    rate_mb_s: float = 0.0  # over the last few seconds (RecentRate)
    last_file: str = ""
    message: str = ""  # an error (which file, why) or the end-of-upload summary

    @property
    def percent(self) -> float:
        """0 to 100: by bytes where the transfer knows the bytes it has to send, else by files.

        During a continuous transfer the total grows as files are written: this is the share of what
        is known now, 100 when the transfer has caught up; it falls when data arrives faster than it
        is sent.
        """
        if self.bytes_total > 0:
            return min(100.0, 100.0 * self.bytes_done / self.bytes_total)
        return 100.0 * self.files_done / self.files_total if self.files_total else 0.0


class RecentRate:
    """MB/s over the last `window` seconds from a running count of the bytes sent: what `Daq:Rate` shows.

    `add(count, now)` records the count (one sample per `spacing` seconds at most) and returns the
    rate since the oldest sample of the window; a count that went down (a new transfer) starts over.
    One caller at a time.
    """

    def __init__(self, window: float = 5.0, spacing: float = 0.25):
        self.window, self.spacing = window, spacing
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, count: float, now: float) -> float:
        samples = self._samples
        if samples and count < samples[-1][1]:
            samples.clear()
        if not samples or now - samples[-1][0] >= self.spacing:
            samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        since, before = samples[0]
        return (count - before) / (now - since) / 1e6 if now > since else 0.0


@dataclass(frozen=True)
class SentFile:
    """A file the transfer put into storage: where it is there, its size and mtime, when it was sent."""

    path: str  # absolute, in storage
    size: int
    mtime: float  # seconds since the epoch
    sent_at: float  # seconds since the epoch
    checksum: str = ""  # "<algorithm>:<hex>" where the transfer has one: the APS DM file catalogue's md5, the
    # built-in engine's blake2b that each copy was verified against (dm.checksum); Globus gives none


class Transfer(Protocol):
    """Moves an experiment's raw data into DM storage, continuously or once."""

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start transferring each source folder into its destination (`{src: dest}`).

        Returns at once with a sentence for Status; the transfer runs in the
        background. `once` makes it an upload: one pass, then it stops by itself.
        """

    def stop(self) -> str: ...

    def progress(self) -> TransferProgress: ...

    def resume(self) -> str | None:
        """After a restart, resume a transfer that was running; a sentence, or None."""

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget what was transferred from these sources (their storage was deleted)."""

    def sent_since(self, mark: float, storage: str) -> list[SentFile]:
        """The files sent into `storage` (an experiment's folder) after `mark` (seconds since the epoch),
        from the transfer's own record (the built-in engine's ledger, the APS DM file catalogue, Globus's
        successful transfers of its tasks): no folder is walked. Returns what the record holds now, [] when
        nothing: it never waits for files still on their way."""


class StateStore(Protocol):
    """The IOC's own durable state, whatever the DM backend: the selection,
    who was e-mailed, the Globus rule ids (adapters/registry/, SQLite)."""

    def selected(self) -> str:
        """The selected experiment's name, '' when none."""

    def select(self, name: str) -> None: ...

    def emailed(self, experiment: str) -> list[str]:
        """Usernames already sent the data-access message for `experiment`."""

    def mark_emailed(self, experiment: str, usernames: Sequence[str]) -> None: ...

    def rules(self, experiment: str) -> dict[str, str]:
        """Globus access rule ids of `experiment`, by username."""

    def record_rules(self, experiment: str, rules: Mapping[str, str]) -> None: ...

    def forget_rules(self, experiment: str, usernames: Sequence[str]) -> None: ...

    def proposal(self, experiment: str) -> Beamtime | None:
        """The proposal `experiment` was made for, as kept at Create/CreateManual/Select; None if not kept."""

    def keep_proposal(self, experiment: str, proposal: Beamtime) -> None: ...

    def followed(self) -> str:
        """The key (`beamtime_key`) of the last beamtime whose experiment was selected by itself."""

    def mark_followed(self, key: str) -> None: ...

    def forget_experiment(self, experiment: str) -> None:
        """Drop everything kept about `experiment` (after Delete), the selection too when it is that one."""


class Access(Protocol):
    """Who may reach an experiment's storage from outside (Globus sharing)."""

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        """Ensure one read-only rule per user with an e-mail: {username: rule_id}.

        An existing rule for the same identity and path is reused, never duplicated.
        When some users fail, the GlobusError carries the rules made so far in `done`.
        """

    def revoke(self, experiment: Experiment, rules: Mapping[str, str]) -> list[str]:
        """Delete these rules ({username: rule_id}); return whose were removed."""

    def url(self, experiment: Experiment) -> str:
        """The web link to the experiment's folder."""


@dataclass(frozen=True)
class Delivery:
    """What an e-mail round did: who got it, who had no address, who failed and why."""

    delivered: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: Mapping[str, str] | None = None


class Mailer(Protocol):
    def send(self, recipients: Sequence[tuple[str, str]], values: Mapping[str, str]) -> Delivery:
        """Render the data-access message with `values` (experiment, title, pi, beamline, globus_url,
        storage_directory) and send it to each (username, address) on its own: one without an address is
        skipped, one the server refuses fails alone (`Delivery`); a server that does not answer: EmailError."""


class TagTarget(Protocol):
    def write(self, prefix: str, values: Mapping[str, str]) -> list[str]:
        """Write each value to `prefix + name`; return the names whose value was cut."""


class MetadataSource(Protocol):
    """The beamline's state as PVs of any IOC show it (metadata.pvs), read over Channel Access."""

    def read(self, pvs: Mapping[str, str]) -> dict[str, dict]:
        """{key: {"pv", "value", "units", "severity", "timestamp"}} for each of `pvs` (key -> PV name);
        a PV that does not answer: {"pv", "missing": True}. Never raises for a PV that is absent."""


@dataclass(frozen=True)
class CatalogFile:
    """One file of a dataset, its path relative to the dataset's source folder."""

    path: str
    size: int
    mtime: str  # ISO 8601
    checksum: str = ""  # "<algorithm>:<hex>", the transfer's (SentFile.checksum)


RECORDS_FOLDER = "metadata"  # in an experiment's storage: the acquisitions' records, written by the IOC alone


@dataclass(frozen=True)
class RecordHead:
    """The first line of an acquisition's record: all that is read of it."""

    n: int  # its number, as in its name `{experiment}-{n}.json`
    mark: float  # the newest `sent_at` of its files: the next acquisition's file list starts after it
    ended: str  # when its file list was taken, as written (ISO 8601)


class RecordsFolder(Protocol):
    """An experiment's folder of acquisition records (RECORDS_FOLDER in its storage), open for one record.

    A record is written aside, then put in place: it is there whole or not at all. Disk failures raise
    OSError. The folder stays open (reached once, never again by name) until `close`.
    """

    path: Path

    def newest(self, experiment: str, latest: float) -> tuple[RecordHead | None, list[str]]:
        """The head of the newest record of `experiment` the IOC wrote, None if none; and the newer files
        skipped, each with why (not the IOC's alone, or a mark after `latest`, seconds since the epoch)."""

    def next_number(self, experiment: str) -> int:
        """The number after the highest of `experiment`'s records, skipped ones too: none is replaced."""

    def write_aside(self, record: Mapping[str, object]) -> str:
        """Write `record` (with the keys of its head: n, mark, ended) to a new hidden file of the folder,
        on disk; its name."""

    def put_in_place(self, aside: str, experiment: str, number: int) -> Path:
        """Rename the file written aside to the record `{experiment}-{number}.json`; its path."""

    def discard(self, aside: str) -> None:
        """Remove a file written aside and not put in place (quietly)."""

    def close(self) -> None: ...


class Records(Protocol):
    """The acquisitions' records, each in its experiment's storage, written by the IOC alone."""

    def open(self, storage: str) -> RecordsFolder:
        """The folder of records of the experiment storage `storage` (a folder), made when missing. OSError
        when the storage cannot be reached; a DMagicError when something other than the IOC's folder of
        records is there (nothing is read or written there)."""


@dataclass(frozen=True)
class Dataset:
    """One acquisition as a catalogue's raw dataset; `pid` is chosen here, once."""

    pid: str
    name: str
    description: str
    owner: str  # the PI
    contact_email: str  # one address or a ;-list: the PI's, else the beamline's
    principal_investigator: str
    owner_group: str
    access_groups: tuple[str, ...]
    proposal_id: str
    source_folder: str
    creation_location: str
    creation_time: str  # ISO 8601
    end_time: str  # ISO 8601
    files: tuple[CatalogFile, ...]
    scientific_metadata: Mapping[str, object]
    owner_email: str = ""  # the PI's one address, where the catalogue takes it
    source_folder_host: str = ""  # where sourceFolder is; "" = the catalogue adapter's own host, if it has a domain
    run_number: str = ""  # the record's number n


@dataclass(frozen=True)
class CatalogStatus:
    """The catalogue's queue: what waits, the last dataset sent, and how the last contact went."""

    pending: int = 0
    last_pid: str = ""
    answered: bool | None = None  # the last attempt: True sent, False refused or down, None no attempt yet
    message: str = ""  # why the last attempt failed (for Status and the log)
    oldest_pid: str = ""  # the dataset waiting longest ("" when none waits)
    waiting_since: datetime | None = None  # when it was queued


class Catalogue(Protocol):
    """A data catalogue (SciCat) behind a durable queue: datasets wait there until sent, once each."""

    def submit(self, dataset: Dataset) -> None:
        """Keep `dataset` in the queue (durably) and have it sent as soon as the catalogue takes it."""

    def status(self) -> CatalogStatus:
        """The queue now; cheap and thread-safe (the sending runs in the adapter's own thread)."""
