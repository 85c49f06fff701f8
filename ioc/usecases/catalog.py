"""The catalogue: each acquisition's metadata snapshots and file list, written next to its data.

An acquisition is what one DaqStart..DaqStop moved, or one Upload; the Catalog
command makes one of the files sent since the last dataset. Its record is
`{StorageDirectory}/metadata/{experiment}-{n}.json`, written aside and renamed;
the newest record's `mark` (when its file list was taken) is where the next
acquisition's list starts, so a restart loses nothing.

Whoever writes the storage (the proposal group) must not steer that list: a record
planted or rewritten there could hide every later file (a mark far ahead) or hang
the command (a FIFO). So `metadata` is the IOC's own folder, reached without
following a link and writable by the IOC alone (0750, the storage's group, setgid
as the storage), its records 0640 (read by whoever reads the data, written by no
one else). A record counts only when it is a regular file of the IOC's user that
no one else may write, with a mark not ahead of now; only its first line is read
(its number, mark and end: a few bytes, however long its file list). Anything else
is skipped and named; a `metadata` that is not the IOC's folder is refused, never
followed. The dataset is queued for the catalogue before its record is put in
place: a mark never passes files that no dataset holds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..domain.catalog_values import catalog_email_problem
from ..domain.model import Beamtime, DiskFull, DMagicError, Experiment, plural
from ..domain.ports import RECORDS_FOLDER, CatalogFile, CatalogStatus, Dataset, SentFile, TransferState
from ..statefiles import FOLDER_FLAGS, READ_FLAGS, disk_full
from .base import BeamlineCore, Outcome

log = logging.getLogger(__name__)

RECORDS = RECORDS_FOLDER  # the folder of the records, in the experiment's storage
HEAD = ("n", "mark", "ended")  # a record's first line: all that is read of it
HEAD_BYTES = 4096  # at most read of a record
EARLIER_RECORD_BYTES = 64 << 20  # at most read of a record an earlier version wrote (no head line: read whole)
CLOCK_SLACK = 3600.0  # seconds a mark may be ahead of this host's clock (the DM's or Globus's times)
_WRITTEN_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class RecordsRefused(DMagicError):
    """`metadata` in an experiment's storage is not the IOC's folder of records: nothing is read or written there."""


@dataclass(frozen=True)
class Acquisition:
    """A DaqStart..DaqStop or an Upload: what it was started for (whatever is selected when it ends) and its start."""

    kind: str  # "daq", "upload"; "catalog" for the Catalog command's dataset
    experiment: Experiment
    proposal: Beamtime | None
    started: datetime | None = None
    snapshot: dict | None = None


class CatalogCases(BeamlineCore):
    """Metadata snapshots and the acquisition's record (the dataset)."""

    _acquisition: Acquisition | None = None  # the one running
    _stuck_pid = ""  # the dataset last said to wait too long

    # ------------------------------------------------------------------ around an acquisition

    def _begin_acquisition(self, kind: str) -> str:
        """At DaqStart or Upload: its experiment and the start snapshot; a sentence about PVs that did not
        answer ('' if none)."""
        acquisition = Acquisition(kind, self._selected(), self.state.proposal, self.clock())
        self._acquisition = acquisition  # before the snapshot (PVs may take seconds): an end seen meanwhile is its
        self._acquisition = replace(acquisition, snapshot=self._snapshot())
        return _missing_note(self._acquisition.snapshot)

    def _end_acquisition(self, *, everything_new: bool = False) -> tuple[str, bool]:
        """Write the record of the acquisition that ended and queue its dataset: (sentence, warning).

        The acquisition is forgotten first, so whatever fails below is said once; it is recorded under
        the experiment it was started for. `everything_new` (the Catalog command, a DaqStop of no
        acquisition this IOC started): when no file was sent, nothing is written."""
        acquisition, self._acquisition = self._acquisition, None
        if acquisition is None:
            acquisition = Acquisition("catalog", self._selected(), self.state.proposal)
        experiment = acquisition.experiment
        if experiment.name not in self.state.experiments and not self._still_there(experiment):
            gone = f"experiment {experiment.name} was deleted before its {acquisition.kind} was catalogued"
            log.warning("catalogue: %s", gone)
            return f"{gone}: no dataset made", True
        try:
            records = RecordsFolder.open(experiment.storage_directory)
        except OSError as error:
            return _not_written(Path(experiment.storage_directory) / RECORDS, error)
        try:
            return self._record(acquisition, records, everything_new=everything_new)
        finally:
            records.close()

    def _still_there(self, experiment: Experiment) -> bool:
        """Whether DM still has `experiment`, which the station's list no longer names (deleted meanwhile?)."""
        return self._contact("DM", self.adapters.dm.get_experiment, experiment.name) is not None

    def _record(self, acquisition: Acquisition, records: RecordsFolder, *, everything_new: bool) -> tuple[str, bool]:
        """The record of `acquisition` in `records`, its dataset queued first: (sentence, warning)."""
        experiment = acquisition.experiment
        previous, skipped = records.newest(experiment.name, self.clock().timestamp() + CLOCK_SLACK)
        skipped_note = _skipped_note(records.path, skipped)
        mark = previous["mark"] if previous else 0.0
        end_snapshot = self._snapshot()
        taken_at = self.clock()
        files = self._contact(self._transfer_system, self.adapters.transfer.sent_since, mark,
                              experiment.storage_directory)  # fmt: skip
        if everything_new and not files:
            return _joined("no file was sent since the last dataset: no dataset made", skipped_note), bool(skipped)
        number = records.next_number(experiment.name)
        record = {
            "n": number,
            "mark": max([mark] + [f.sent_at for f in files]),
            "ended": taken_at.isoformat(),
            "proposal": _proposal_fields(experiment, acquisition.proposal),
            "experiment": experiment.name,
            "acquisition": acquisition.kind,
            "storage_directory": experiment.storage_directory,
            "started": _time_or(acquisition.started or (previous or {}).get("ended"), taken_at),
            "snapshots": {"start": acquisition.snapshot, "end": end_snapshot},
            "number_of_files": len(files),
            "size": sum(f.size for f in files),
            "files": [self._file_entry(experiment, f) for f in files],
        }
        catalogue = self.adapters.catalogue
        dataset, unsent = self._dataset(acquisition, record) if catalogue is not None else (None, "")
        if dataset is not None:
            dataset = replace(dataset, name=f"{experiment.name}-{number}", run_number=str(number))
            record["pid"] = dataset.pid
        try:
            aside = records.write_aside(record)
        except OSError as error:
            return _not_written(records.path, error)
        try:
            if catalogue is not None and dataset is not None:  # queued first: no record counts files no dataset has
                self._contact(None, catalogue.submit, dataset)
        except BaseException:
            records.discard(aside)
            raise
        try:
            path = records.put_in_place(aside, f"{experiment.name}-{number}.json")
        except OSError as error:  # a rename in the folder: hardly ever
            records.discard(aside)
            log.warning("metadata record not put in place in %s: %s", records.path, error)
            queued = f"; its dataset is queued for SciCat as {dataset.pid}" if dataset is not None else ""
            return f"metadata record not written in {records.path}: {error.strerror or error}{queued}", True
        text = json.dumps(record["snapshots"], ensure_ascii=False, separators=(",", ":"))  # compact: it fits the PV
        self._change(metadata_last=text)
        missing = _missing_note(acquisition.snapshot, end_snapshot)  # one at the start may answer at the end
        sentence = f"dataset {path.name}: {plural(len(files), 'file')}, {record['size']} bytes"
        if dataset is not None:
            sentence += f"; queued for SciCat as {dataset.pid}"
        elif unsent:
            log.warning("catalogue: %s not sent to SciCat: %s", path.name, unsent)
            sentence += f"; not sent to SciCat: {unsent}"
        return _joined(sentence, missing, skipped_note), bool(missing or unsent or skipped)

    def _dataset(self, acquisition: Acquisition, record: dict) -> tuple[Dataset | None, str]:
        """The record as the catalogue's raw dataset, with a pid chosen here, once (it is never sent twice);
        or None and why, when it lacks what SciCat needs of every dataset (its owner group, a contact).

        The contact is the PI's address where SciCat takes it (then also the owner's), else the beamline's
        (scicat.contact_email)."""
        scicat, experiment, proposal = self.settings.scicat, acquisition.experiment, acquisition.proposal
        pi = proposal.pi if proposal else None
        pi_email = pi.email.strip() if pi and pi.email else ""
        owner_email = "" if catalog_email_problem(pi_email) else pi_email
        name = pi.full_name if pi and pi.full_name else next((u.name for u in experiment.users if u.name), "")
        group = scicat.owner_group.format(gup=experiment.gup, beamline=self.settings.beamline.name,
                                          station=self.settings.beamline.station)  # fmt: skip
        if not group.strip():
            return None, f"scicat.owner_group {scicat.owner_group!r} names no group for {experiment.name} (no GUP)"
        contact = owner_email or scicat.contact_email
        if not contact:
            return None, "no contact: the PI has no e-mail address SciCat takes, and scicat.contact_email is not set"
        return Dataset(
            pid=str(uuid.uuid4()),
            name=experiment.name,
            description=experiment.title,
            owner=name,
            contact_email=contact,
            principal_investigator=name,
            owner_group=group,
            access_groups=scicat.access_groups,
            proposal_id=experiment.gup,
            source_folder=experiment.storage_directory,
            creation_location=scicat.creation_location,
            creation_time=record["started"],
            end_time=record["ended"],
            files=tuple(CatalogFile(f["path"], f["size"], f["mtime"], f.get("checksum", "")) for f in record["files"]),
            scientific_metadata={
                "experiment": experiment.name,
                "acquisition": record["acquisition"],
                "snapshots": record["snapshots"],
            },  # fmt: skip
            owner_email=owner_email,
            source_folder_host=scicat.source_folder_host,
        ), ""

    def catalog_status(self) -> CatalogStatus:
        """The catalogue's queue (a query, beside the commands); its last contact goes to Catalog:Health,
        and so does a dataset waiting longer than scicat.stuck_after, however SciCat answers meanwhile."""
        catalogue = self.adapters.catalogue
        if catalogue is None:
            return CatalogStatus()
        status = self._unless_stuck(catalogue.status())
        if status.answered is not None:
            self._contacts.put(("Catalog", status.answered))
        return status

    def _unless_stuck(self, status: CatalogStatus) -> CatalogStatus:
        """`status`, or a failure naming the dataset that has waited too long, since when and why."""
        limit = self.settings.scicat.stuck_after
        if status.waiting_since is None or (self.clock() - status.waiting_since).total_seconds() <= limit:
            return status
        others = f" and {plural(status.pending - 1, 'other')}" if status.pending > 1 else ""
        since = status.waiting_since.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")
        why = status.message or ("SciCat has not answered yet" if status.answered is None else "SciCat answers slowly")
        message = (f"dataset {status.oldest_pid}{others} waiting for SciCat for more than {_duration(limit)} "
                   f"(since {since}, scicat.stuck_after): {why}")  # fmt: skip
        if status.oldest_pid != self._stuck_pid:  # polled twice a second: logged once a dataset
            self._stuck_pid = status.oldest_pid
            log.warning("catalogue: %s", message)
        return replace(status, answered=False, message=message)

    def _snapshot(self) -> dict | None:
        """The metadata PVs now (None when metadata.pvs names none)."""
        pvs = self.settings.metadata.pvs
        if not pvs or self.adapters.metadata is None:
            return None
        return {"taken": self.clock().isoformat(), "pvs": self.adapters.metadata.read(pvs)}

    def _file_entry(self, experiment: Experiment, sent: SentFile) -> dict:
        """A file of the record: its path in the experiment's storage, size, mtime, and checksum: the
        transfer's where it has one (the APS DM's md5), else one computed here when dm.checksum."""
        entry = {
            # a name that is not UTF-8 is kept readable, its odd bytes as \xNN (as Status and the log show it)
            "path": os.fsencode(os.path.relpath(sent.path, experiment.storage_directory)).decode(
                "utf-8", "backslashreplace"
            ),
            "size": sent.size,
            "mtime": datetime.fromtimestamp(sent.mtime, timezone.utc).isoformat(),
        }
        if sent.checksum:
            entry["checksum"] = sent.checksum
        elif self.settings.dm.checksum:
            try:
                entry["checksum"] = _checksum(sent)
            except OSError as error:
                log.warning("metadata: no checksum of %s: %s", sent.path, error.strerror or error)
        return entry

    # ------------------------------------------------------------------ commands

    def catalog(self) -> Outcome:
        """The Catalog command: a dataset of the files sent since the last one."""
        sentence, warning = self._end_acquisition(everything_new=True)
        return Outcome(sentence, warning=warning)

    def upload_ended(self) -> Outcome:
        """Background, when an upload ended by itself: its dataset (nothing when no upload was running)."""
        if not self.uploading or self.transfer_running():
            return Outcome("")  # none ran, or the progress that said it ended was read before it started
        sentence, warning = self._end_acquisition()
        summary = self.adapters.transfer.progress().message  # the upload's own summary stays on Status
        return Outcome(f"{summary}; {sentence}" if summary else f"upload catalogued: {sentence}", warning=warning)

    def transfer_running(self) -> bool:
        return self.adapters.transfer.progress().state == TransferState.RUNNING

    @property
    def uploading(self) -> bool:
        return self._acquisition is not None and self._acquisition.kind == "upload"


def _duration(seconds: float) -> str:
    """A duration in the largest units that say it: '45 s', '15 min', '2 h 30 min', '3 d 4 h'."""
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if seconds < 120:
        return f"{seconds:g} s"
    if hours < 2:
        return f"{minutes} min"
    if hours < 48:
        return f"{hours} h" + (f" {minutes % 60} min" if minutes % 60 else "")
    return f"{hours // 24} d" + (f" {hours % 24} h" if hours % 24 else "")


def _time_or(moment: object, default: datetime) -> str:
    """`moment` in ISO 8601 if it is a time (an acquisition's start, an earlier record's end read back from its
    file), else `default`."""
    if isinstance(moment, datetime):
        return moment.isoformat()
    try:
        return datetime.fromisoformat(str(moment)).isoformat()
    except ValueError:
        return default.isoformat()


def _missing_note(*snapshots: dict | None) -> str:
    """A sentence naming the PVs that did not answer in any of `snapshots` ('' if none)."""
    missing = dict.fromkeys(
        entry["pv"] for snapshot in snapshots if snapshot for entry in snapshot["pvs"].values() if entry.get("missing")
    )
    return f"metadata: {', '.join(missing)} did not answer, recorded as missing" if missing else ""


def _record_number(name: str, experiment: str) -> int | None:
    found = re.fullmatch(re.escape(experiment) + r"-([0-9]{1,18})\.json", name)
    return int(found.group(1)) if found else None


def _proposal_fields(experiment: Experiment, proposal: Beamtime | None) -> dict:
    pi = proposal.pi if proposal else None
    return {
        "gup": experiment.gup,
        "title": experiment.title,
        "esaf": experiment.esaf,
        "pi": {"name": pi.full_name, "email": pi.email, "badge": pi.badge, "institution": pi.institution}
        if pi
        else None,
    }


def _checksum(sent: SentFile) -> str:
    """blake2b of the file sent, as it is now: OSError when it is no longer that file (a symlink, a FIFO or any
    other non-file swapped in, which are never followed nor waited on; another size)."""
    try:
        fd = os.open(sent.path, READ_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link now, not followed") from None
        raise
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file")
        if found.st_size != sent.size:
            raise OSError(errno.EINVAL, f"{found.st_size} bytes now, not the {sent.size} sent")
        return "blake2b:" + hashlib.file_digest(file, hashlib.blake2b).hexdigest()


def _not_written(where: Path, error: OSError) -> tuple[str, bool]:
    """A record that could not be written (nothing queued: its files go into the next dataset): a warning;
    a full storage fails the command (DiskFull, "storage full: ...")."""
    reason = error.strerror or str(error)
    if disk_full(error):
        raise DiskFull(f"storage full: metadata record not written in {where}: {reason}; "
                       "its files go into the next dataset") from error  # fmt: skip
    log.warning("metadata record not written in %s: %s", where, reason)
    return f"metadata record not written in {where}: {reason}", True


def _skipped_note(folder: Path, skipped: list[str]) -> str:
    """A sentence naming the records skipped ('' if none), logged once: they are newer than the one that
    counts, and the record written now is newer than them."""
    if not skipped:
        return ""
    note = f"metadata: skipped in {folder}, not records of the IOC: {'; '.join(skipped)}"
    log.warning("%s", note)
    return note


def _joined(*sentences: str) -> str:
    return "; ".join(sentence for sentence in sentences if sentence)


class RecordsFolder:
    """`{storage}/metadata`, the IOC's folder of records, open (`fd`) for one acquisition's record."""

    def __init__(self, path: Path, fd: int, storage: os.stat_result):
        self.path, self.fd, self.storage = path, fd, storage

    @classmethod
    def open(cls, storage: str) -> RecordsFolder:
        """The folder of records of the experiment storage `storage`, made when missing. Reached from the
        storage (never made here) without following a link. RecordsRefused when something else is there
        (a link, a file, a folder of someone else's); OSError when the storage cannot be reached."""
        path = Path(storage) / RECORDS
        storage_fd = os.open(storage, FOLDER_FLAGS)  # gone (deleted, unmounted): OSError, said as a warning
        try:
            found = os.fstat(storage_fd)
            made = _made(storage_fd)
            try:
                fd = os.open(RECORDS, FOLDER_FLAGS, dir_fd=storage_fd)
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                link = stat.S_ISLNK(os.stat(RECORDS, dir_fd=storage_fd, follow_symlinks=False).st_mode)
                what = "a symbolic link, not followed" if link else "not a folder"
                raise RecordsRefused(f"metadata record not written: {path} is {what}; whoever writes the storage "
                                     "may have put it there: move it away, then Catalog") from None  # fmt: skip
        finally:
            os.close(storage_fd)
        folder = cls(path, fd, found)
        try:
            folder._claim(made)
        except BaseException:
            folder.close()
            raise
        return folder

    def _claim(self, made: bool) -> None:
        """Make the folder the IOC's alone: 0750 with the storage's group (and its setgid) when just made; an
        earlier version's, writable by its group, is made so. One of someone else's is refused."""
        found = os.fstat(self.fd)
        if found.st_uid != os.geteuid():
            raise RecordsRefused(f"metadata record not written: {self.path} is not the IOC's folder of records "
                                 f"(owned by uid {found.st_uid}, the IOC runs as {os.geteuid()}); nothing read "
                                 "from it: move it away, then Catalog")  # fmt: skip
        mode = stat.S_IMODE(found.st_mode)
        if made:
            if self._give_group(self.fd):
                os.fchmod(self.fd, stat.S_IRWXU | self.storage.st_mode & (0o055 | stat.S_ISGID))
        elif mode & _WRITTEN_BY_OTHERS:
            mode &= ~_WRITTEN_BY_OTHERS
            os.fchmod(self.fd, mode)
            log.warning("metadata folder %s was writable by its group or others (an earlier version made it so): "
                        "now %o; the records written before are not trusted", self.path, mode)  # fmt: skip

    def _give_group(self, fd: int) -> bool:
        """Give the folder or record open as `fd` the storage's group; False (said) when the IOC cannot."""
        try:
            os.fchown(fd, -1, self.storage.st_gid)
        except PermissionError:
            log.warning("metadata: %s not given to the group of %s (the IOC's user is not in it); readable by its "
                        "owner only", self.path, self.path.parent)  # fmt: skip
            return False
        return True

    def newest(self, experiment: str, latest: float) -> tuple[dict | None, list[str]]:
        """The head (n, mark, ended) of the newest record of `experiment` the IOC wrote, None if none; and the
        newer ones skipped, each with why. A mark after `latest` (seconds since the epoch) is no record's."""
        skipped: list[str] = []
        for number, name in sorted(self._numbered(experiment), reverse=True):
            head, why = self._head(name, number, latest)
            if head is not None:
                return head, skipped
            skipped.append(f"{name} ({why})")
        return None, skipped

    def next_number(self, experiment: str) -> int:
        return max((number for number, _ in self._numbered(experiment)), default=0) + 1

    def _numbered(self, experiment: str) -> list[tuple[int, str]]:
        return [(n, name) for name in os.listdir(self.fd) if (n := _record_number(name, experiment)) is not None]

    def _head(self, name: str, number: int, latest: float) -> tuple[dict | None, str]:
        """The head of record `name`, or None and why it is not one the IOC wrote. Opened without following a
        link or waiting on a FIFO; at most HEAD_BYTES read."""
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
        except OSError as error:
            return None, "a symbolic link" if error.errno == errno.ELOOP else (error.strerror or str(error))
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                return None, "not a regular file"
            if found.st_uid != os.geteuid():
                return None, f"owned by uid {found.st_uid}"
            if found.st_mode & _WRITTEN_BY_OTHERS:
                return None, "writable by its group or others"
            start = os.read(fd, HEAD_BYTES)
            first = start.partition(b"\n")[0]
            if first.strip() == b"{":  # an earlier version's record, indented JSON: its head is inside
                return _head_of_earlier(start + _read_up_to(fd, EARLIER_RECORD_BYTES - len(start)), number, latest)
        except OSError as error:
            return None, error.strerror or str(error)
        finally:
            os.close(fd)
        return _head_of(first, number, latest)

    def write_aside(self, record: dict) -> str:
        """Write `record` to a new hidden file of the folder, on disk, readable as the data is; its name."""
        aside = f".record-{uuid.uuid4().hex[:8]}"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)  # fmt: skip
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                if self._give_group(fd):
                    os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR | self.storage.st_mode & 0o044)
                file.write(_record_text(record))
                file.flush()
                os.fsync(fd)
        except BaseException:
            self.discard(aside)
            raise
        return aside

    def put_in_place(self, aside: str, name: str) -> Path:
        os.replace(aside, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)
        return self.path / name

    def discard(self, aside: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(aside, dir_fd=self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _made(storage_fd: int) -> bool:
    """Make the folder of records in the storage open as `storage_fd`, 0700 until it is given its group and
    mode; False when something is there already."""
    try:
        os.mkdir(RECORDS, 0o700, dir_fd=storage_fd)
    except FileExistsError:
        return False
    return True


def _record_text(record: dict) -> str:
    """`record` as JSON whose first line is its head (n, mark, ended): all the next acquisition reads of it."""
    head = json.dumps({key: record[key] for key in HEAD}, ensure_ascii=False)
    rest = json.dumps({key: value for key, value in record.items() if key not in HEAD}, indent=1, ensure_ascii=False)
    return f"{head[:-1]},{rest[1:]}\n"


def _read_up_to(fd: int, limit: int) -> bytes:
    """The rest of the file open as `fd`, at most `limit` bytes (one more tells that it is longer)."""
    chunks, left = [], limit + 1
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _head_of_earlier(text: bytes, number: int, latest: float) -> tuple[dict | None, str]:
    """The head of record number `number` written by an earlier version (no head line), read whole."""
    if len(text) > EARLIER_RECORD_BYTES:
        return None, f"an earlier version's record larger than {EARLIER_RECORD_BYTES >> 20} MB"
    try:
        record = json.loads(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(record, dict) or not {"mark", "ended"} <= record.keys():
        return None, "no mark in it"
    return _checked({"n": number, "mark": record["mark"], "ended": record["ended"]}, latest)


def _head_of(line: bytes, number: int, latest: float) -> tuple[dict | None, str]:
    """The head of record number `number` from its first line; None and why when it is none."""
    try:
        head = json.loads(line[:-1] + b"}") if line.endswith(b",") else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("n") != number or not set(HEAD) <= head.keys():
        return None, "no record head on its first line"
    return _checked(head, latest)


def _checked(head: dict, latest: float) -> tuple[dict | None, str]:
    """`head` when its mark is a time before `latest`; else None and why."""
    mark = head["mark"]
    if isinstance(mark, bool) or not isinstance(mark, (int, float)) or not 0 <= mark <= latest:
        return None, f"its mark {mark!r} is no time before now"
    return head, ""
