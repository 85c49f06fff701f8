"""The catalogue: each acquisition's metadata snapshots and file list, written next to its data.

An acquisition is what one DaqStart..DaqStop moved, or one Upload; the Catalog
command makes one of the files sent since the last dataset. Its record is
`{StorageDirectory}/metadata/{experiment}-{n}.json`, written aside and renamed;
the newest record's `mark` (when its file list was taken) is where the next
acquisition's list starts, so a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ..domain.catalog_values import catalog_email_problem
from ..domain.model import Experiment, plural
from ..domain.ports import CatalogFile, CatalogStatus, Dataset, SentFile, TransferState
from .base import BeamlineCore, Outcome

log = logging.getLogger(__name__)

RECORDS = "metadata"  # the folder of the records, in the experiment's storage


class CatalogCases(BeamlineCore):
    """Metadata snapshots and the acquisition's record (the dataset)."""

    _acquisition = ""  # "daq" or "upload" while one runs
    _start_snapshot: dict | None = None
    _started_at: datetime | None = None
    _stuck_pid = ""  # the dataset last said to wait too long

    # ------------------------------------------------------------------ around an acquisition

    def _begin_acquisition(self, kind: str) -> str:
        """At DaqStart or Upload: the start snapshot; a sentence about PVs that did not answer ('' if none)."""
        self._acquisition, self._started_at = kind, self.clock()
        self._start_snapshot = self._snapshot()
        return _missing_note(self._start_snapshot)

    def _end_acquisition(self, *, everything_new: bool = False) -> tuple[str, bool]:
        """Write the record of the acquisition that ended: (sentence, warning).

        `everything_new` (the Catalog command, a DaqStop of no acquisition this IOC started): when no
        file was sent, nothing is written."""
        experiment = self._selected()
        kind, self._acquisition = self._acquisition or "catalog", ""
        start, self._start_snapshot = self._start_snapshot, None
        started, self._started_at = self._started_at, None
        records = Path(experiment.storage_directory) / RECORDS
        previous = _newest_record(records, experiment.name)
        mark = float(previous.get("mark", 0.0)) if previous else 0.0
        end_snapshot = self._snapshot()
        taken_at = self.clock()
        files = self._contact(self._transfer_system, self.adapters.transfer.sent_since, mark,
                              experiment.storage_directory)  # fmt: skip
        if everything_new and not files:
            return "no file was sent since the last dataset: no dataset made", False
        record = {
            "proposal": self._proposal_fields(experiment),
            "experiment": experiment.name,
            "acquisition": kind,
            "storage_directory": experiment.storage_directory,
            "started": started.isoformat() if started else _time_or((previous or {}).get("ended"), taken_at),
            "ended": taken_at.isoformat(),
            "mark": max([mark] + [f.sent_at for f in files]),
            "snapshots": {"start": start, "end": end_snapshot},
            "number_of_files": len(files),
            "size": sum(f.size for f in files),
            "files": [self._file_entry(experiment, f) for f in files],
        }
        dataset, unsent = self._dataset(experiment, record) if self.adapters.catalogue is not None else (None, "")
        if dataset is not None:
            record["pid"] = dataset.pid
        try:
            path = _write_record(records, experiment.name, record)
        except OSError as error:
            log.warning("metadata record of %s not written: %s", experiment.name, error)
            return f"metadata record not written in {records}: {error.strerror or error}", True
        text = json.dumps(record["snapshots"], ensure_ascii=False, separators=(",", ":"))  # compact: it fits the PV
        self._change(metadata_last=text)
        missing = _missing_note(start, end_snapshot)  # one at the start may answer at the end
        sentence = f"dataset {path.name}: {plural(len(files), 'file')}, {record['size']} bytes"
        if dataset is not None and self.adapters.catalogue is not None:
            run = str(_record_number(path.name, experiment.name))
            self._contact(None, self.adapters.catalogue.submit, replace(dataset, name=path.stem, run_number=run))
            sentence += f"; queued for SciCat as {dataset.pid}"
        elif unsent:
            log.warning("catalogue: %s not sent to SciCat: %s", path.name, unsent)
            sentence += f"; not sent to SciCat: {unsent}"
        return sentence + (f"; {missing}" if missing else ""), bool(missing or unsent)

    def _dataset(self, experiment: Experiment, record: dict) -> tuple[Dataset | None, str]:
        """The record as the catalogue's raw dataset, with a pid chosen here, once (it is never sent twice);
        or None and why, when it lacks what SciCat needs of every dataset (its owner group, a contact).

        The contact is the PI's address where SciCat takes it (then also the owner's), else the beamline's
        (scicat.contact_email)."""
        scicat, proposal = self.settings.scicat, self.state.proposal
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

    def _proposal_fields(self, experiment: Experiment) -> dict:
        proposal = self.state.proposal
        pi = proposal.pi if proposal else None
        return {
            "gup": experiment.gup,
            "title": experiment.title,
            "esaf": experiment.esaf,
            "pi": {"name": pi.full_name, "email": pi.email, "badge": pi.badge, "institution": pi.institution}
            if pi
            else None,
        }

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
                with open(sent.path, "rb") as file:
                    entry["checksum"] = "blake2b:" + hashlib.file_digest(file, hashlib.blake2b).hexdigest()
            except OSError as error:
                log.warning("metadata: no checksum of %s: %s", sent.path, error)
        return entry

    # ------------------------------------------------------------------ commands

    def catalog(self) -> Outcome:
        """The Catalog command: a dataset of the files sent since the last one."""
        sentence, warning = self._end_acquisition(everything_new=True)
        return Outcome(sentence, warning=warning)

    def upload_ended(self) -> Outcome:
        """Background, when an upload ended by itself: its dataset (nothing when no upload was running)."""
        if self._acquisition != "upload" or self.transfer_running():
            return Outcome("")  # none ran, or the progress that said it ended was read before it started
        sentence, warning = self._end_acquisition()
        summary = self.adapters.transfer.progress().message  # the upload's own summary stays on Status
        return Outcome(f"{summary}; {sentence}" if summary else f"upload catalogued: {sentence}", warning=warning)

    def transfer_running(self) -> bool:
        return self.adapters.transfer.progress().state == TransferState.RUNNING

    @property
    def uploading(self) -> bool:
        return self._acquisition == "upload"


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


def _time_or(text: object, default: datetime) -> str:
    """`text` if it is an ISO 8601 time (an earlier record's end, read back from its file), else `default`."""
    try:
        return datetime.fromisoformat(str(text)).isoformat()
    except ValueError:
        return default.isoformat()


def _missing_note(*snapshots: dict | None) -> str:
    """A sentence naming the PVs that did not answer in any of `snapshots` ('' if none)."""
    missing = dict.fromkeys(
        entry["pv"] for snapshot in snapshots if snapshot for entry in snapshot["pvs"].values() if entry.get("missing")
    )
    return f"metadata: {', '.join(missing)} did not answer, recorded as missing" if missing else ""


def _record_number(name: str, experiment: str) -> int | None:
    found = re.fullmatch(re.escape(experiment) + r"-(\d+)\.json", name)
    return int(found.group(1)) if found else None


def _newest_record(records: Path, experiment: str) -> dict | None:
    """The record with the highest number, or None (none yet, or unreadable: then the list starts afresh)."""
    try:
        numbered = [(n, p) for p in records.iterdir() if (n := _record_number(p.name, experiment)) is not None]
    except OSError:
        return None
    for _, path in sorted(numbered, reverse=True):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("metadata record %s not read: %s", path, error)
    return None


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # never through a symlink


def _write_record(records: Path, experiment: str, record: dict) -> Path:
    """Write `record` as the next `{experiment}-{n}.json`, aside and renamed; its path.

    Readable by whoever may read the data beside it: the storage folder's group and its rw bits (never x,
    setuid, setgid or sticky; owner only where the IOC cannot give it that group). Reached from the
    storage folder by descriptors: a symlink planted as `metadata` (whoever writes the storage may) is
    refused, not followed."""
    storage_fd = os.open(records.parent, _FOLDER)  # never made: gone (deleted, unmounted) = OSError, said on Status
    try:
        storage = os.fstat(storage_fd)
        try:
            os.mkdir(records.name, 0o700, dir_fd=storage_fd)
            made = True
        except FileExistsError:
            made = False
        try:
            folder = os.open(records.name, _FOLDER, dir_fd=storage_fd)
        except OSError as error:
            if os.path.islink(records):
                raise OSError(errno.ELOOP, "a symbolic link, not followed", str(records)) from error
            raise
    finally:
        os.close(storage_fd)
    try:
        if made:
            os.fchmod(folder, storage.st_mode & 0o2777)
        numbers = [n for name in os.listdir(folder) if (n := _record_number(name, experiment)) is not None]
        record = {"n": max(numbers, default=0) + 1, **record}
        name, temporary = f"{experiment}-{record['n']}.json", f".record-{uuid.uuid4().hex[:8]}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=folder)  # fmt: skip
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                try:
                    os.fchown(fd, -1, storage.st_gid)
                    os.fchmod(fd, storage.st_mode & 0o666)
                except PermissionError:
                    log.warning("metadata record %s: not given to the group of %s (the IOC's user is not in it); "
                                "readable by its owner only", records / name, records.parent)  # fmt: skip
                json.dump(record, file, indent=1, ensure_ascii=False)
                file.flush()
                os.fsync(fd)
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return records / name
