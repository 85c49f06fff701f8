"""The ports of the catalogue: the acquisitions' records in storage, and the catalogue (SciCat) they are sent to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol


class CatalogFile(NamedTuple):
    """One file of a dataset, its path relative to the dataset's source folder. A tuple: a dataset's end
    makes a million, and a tuple is made three times faster than a frozen dataclass."""

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

    def begin_aside(self, fields: Mapping[str, object]) -> AsideRecord:
        """Start a record in a new hidden file of the folder: `fields` are those known before its files
        (n and ended of its head among them); its files and the rest come through the AsideRecord."""

    def put_in_place(self, aside: str, experiment: str, number: int) -> Path:
        """Rename the file written aside to the record `{experiment}-{number}.json`; its path."""

    def discard(self, aside: str) -> None:
        """Remove a file written aside and not put in place (quietly)."""

    def close(self) -> None: ...


class AsideRecord(Protocol):
    """A record being written aside, its files written as they come: a million never in memory at once."""

    name: str  # its hidden file's, in the folder

    def add(self, files: Iterable[CatalogFile]) -> None:
        """Write the next files of the record's list."""

    def finish(self, fields: Mapping[str, object]) -> None:
        """Write `fields`, those known once every file is added (the mark of its head among them), and the
        head: the record whole and on disk, ready to be put in place."""


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


class StagedDataset(Protocol):
    """A dataset being put into the catalogue's queue: its files added as they come (a million never in
    memory at once), then committed, all of it, or dropped, none of it. Each raises a DiskFull ("state_dir
    full: ...") or a CatalogError when the queue cannot take it."""

    def add(self, files: Iterable[CatalogFile]) -> None:
        """The dataset's next files."""

    def commit(self) -> None:
        """Keep the dataset in the queue (durably) and have it sent as soon as the catalogue takes it."""

    def drop(self) -> None:
        """Forget what was added: nothing of the dataset is queued (quietly)."""


class Catalogue(Protocol):
    """A data catalogue (SciCat) behind a durable queue: datasets wait there until sent, once each."""

    def stage(self, dataset: Dataset) -> StagedDataset:
        """Start putting `dataset` into the queue, with its `files` so far: none of it is sent before its
        commit."""

    def status(self) -> CatalogStatus:
        """The queue now; cheap and thread-safe (the sending runs in the adapter's own thread)."""
