"""The catalogue: each acquisition's metadata snapshots and file list, written next to its data (SPEC section 10).

An acquisition is what one DaqStart..DaqStop moved, or one Upload; the Catalog
command makes one of the files sent since the last dataset. Its record is
`{StorageDirectory}/metadata/{experiment}-{n}.json`, written aside and renamed;
the newest record's `mark` (when its file list was taken) is where the next
acquisition's list starts, so a restart loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ..domain.model import Experiment, plural
from ..domain.ports import CatalogFile, CatalogStatus, Dataset, TransferState
from .base import BeamlineCore, Outcome

log = logging.getLogger(__name__)

RECORDS = "metadata"  # the folder of the records, in the experiment's storage


class CatalogCases(BeamlineCore):
    """Metadata snapshots and the acquisition's record (the dataset)."""

    _acquisition = ""  # "daq" or "upload" while one runs
    _start_snapshot: dict | None = None
    _started_at: datetime | None = None

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
            "started": started.isoformat() if started else (previous or {}).get("ended", taken_at.isoformat()),
            "ended": taken_at.isoformat(),
            "mark": max([mark] + [f.sent_at for f in files]),
            "snapshots": {"start": start, "end": end_snapshot},
            "number_of_files": len(files),
            "size": sum(f.size for f in files),
            "files": [self._file_entry(experiment, f) for f in files],
        }
        dataset = self._dataset(experiment, record) if self.adapters.catalogue is not None else None
        if dataset is not None:
            record["pid"] = dataset.pid
        try:
            path = _write_record(records, experiment.name, record)
        except OSError as error:
            log.warning("metadata record of %s not written: %s", experiment.name, error)
            return f"metadata record not written in {records}: {error.strerror or error}", True
        text = json.dumps(record["snapshots"], ensure_ascii=False, separators=(",", ":"))  # compact: it fits the PV
        self._change(metadata_last=text)
        missing = _missing_note(end_snapshot)
        sentence = f"dataset {path.name}: {plural(len(files), 'file')}, {record['size']} bytes"
        if dataset is not None and self.adapters.catalogue is not None:
            self._contact(None, self.adapters.catalogue.submit, replace(dataset, name=path.stem))
            sentence += f"; queued for SciCat as {dataset.pid}"
        return sentence + (f"; {missing}" if missing else ""), bool(missing)

    def _dataset(self, experiment: Experiment, record: dict) -> Dataset:
        """The record as the catalogue's raw dataset, with a pid chosen here, once (it is never sent twice)."""
        scicat, proposal = self.settings.scicat, self.state.proposal
        pi = proposal.pi if proposal else None
        email = (pi.email if pi else "") or next((u.email for u in experiment.users if u.email), "")
        name = pi.full_name if pi and pi.full_name else next((u.name for u in experiment.users if u.name), "")
        group = scicat.owner_group.format(gup=experiment.gup, beamline=self.settings.beamline.name,
                                          station=self.settings.beamline.station)  # fmt: skip
        return Dataset(
            pid=str(uuid.uuid4()),
            name=experiment.name,
            description=experiment.title,
            owner=name,
            contact_email=email,
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
        )

    def catalog_status(self) -> CatalogStatus:
        """The catalogue's queue (a query, beside the commands); its last contact goes to Catalog:Health."""
        catalogue = self.adapters.catalogue
        if catalogue is None:
            return CatalogStatus()
        status = catalogue.status()
        if status.answered is not None:
            self._contacts.put(("Catalog", status.answered))
        return status

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

    def _file_entry(self, experiment: Experiment, sent) -> dict:
        entry = {
            # a name that is not UTF-8 is kept readable, its odd bytes as \xNN (as Status and the log show it)
            "path": os.fsencode(os.path.relpath(sent.path, experiment.storage_directory)).decode(
                "utf-8", "backslashreplace"
            ),
            "size": sent.size,
            "mtime": datetime.fromtimestamp(sent.mtime, timezone.utc).isoformat(),
        }
        if self.settings.dm.checksum:
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


def _missing_note(snapshot: dict | None) -> str:
    if not snapshot:
        return ""
    missing = [entry["pv"] for entry in snapshot["pvs"].values() if entry.get("missing")]
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


def _write_record(records: Path, experiment: str, record: dict) -> Path:
    """Write `record` as the next `{experiment}-{n}.json`, aside and renamed; its path."""
    records.mkdir(exist_ok=True)  # never the storage itself: gone (deleted, unmounted) = OSError, said on Status
    numbers = [n for p in records.iterdir() if (n := _record_number(p.name, experiment)) is not None]
    record = {"n": max(numbers, default=0) + 1, **record}
    path = records / f"{experiment}-{record['n']}.json"
    fd, temporary = tempfile.mkstemp(prefix=".record-", dir=records)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=1, ensure_ascii=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
