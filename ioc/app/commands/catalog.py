"""The catalogue: each acquisition's metadata snapshots and file list, written next to its data.

An acquisition is what one DaqStart..DaqStop moved, or one Upload; the Catalog
command makes one of the files sent since the last dataset. Its record goes into
the experiment's folder of records (`ports.Records`: written aside and put in
place, the IOC's alone); the newest record's `mark` (when its file list was taken)
is where the next acquisition's list starts, so a restart loses nothing. The file
list, checksums included, is the transfer's own (`Transfer.sent_since`): no data
file is opened here. The dataset is queued for the catalogue before its record is
put in place: a mark never passes files that no dataset holds.

The list is read once, each file written into the record aside and added to the
dataset in the queue as it comes, its totals counted on the way: a million files
are never in memory at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import operator
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ...domain.beamtime import Beamtime
from ...domain.catalog_ports import (
    RECORDS_FOLDER,
    AsideRecord,
    CatalogFile,
    Catalogue,
    Dataset,
    Records,
    RecordsFolder,
    StagedDataset,
)
from ...domain.catalog_values import catalog_email_problem
from ...domain.errors import DiskFull
from ...domain.experiment import Experiment
from ...domain.naming import plural
from ...domain.ports import SentFile, TransferState
from ...statefiles import disk_full
from ..handling import Step
from ..messages import Catalog, UploadEnded
from ..state import Acquisition, Outcome
from .common import selected

log = logging.getLogger(__name__)

CLOCK_SLACK = 3600.0  # seconds a mark may be ahead of this host's clock (the DM's or Globus's times)
BATCH = 1000  # files of a list handed on at a time: few calls, little memory
_SIZE, _SENT_AT = operator.attrgetter("size"), operator.attrgetter("sent_at")


def catalog(step: Step, command: Catalog) -> Outcome:
    """The Catalog command: a dataset of the files sent since the last one."""
    sentence, warning = end_acquisition(step, everything_new=True)
    return Outcome(sentence, warning=warning)


def upload_ended(step: Step, command: UploadEnded) -> Outcome:
    """When an upload ended by itself: its dataset (nothing when no upload was running)."""
    transfer = step.services.adapters.transfer
    if not step.state.uploading or transfer.progress().state == TransferState.RUNNING:
        return Outcome("")  # none ran, or the progress that said it ended was read before it started
    sentence, warning = end_acquisition(step)
    summary = transfer.progress().message  # the upload's own summary stays on Status
    return Outcome(f"{summary}; {sentence}" if summary else f"upload catalogued: {sentence}", warning=warning)


# ---------------------------------------------------------------- around an acquisition


def begin_acquisition(step: Step, kind: str) -> str:
    """At DaqStart or Upload: its experiment and the start snapshot; a sentence about PVs that did not
    answer ('' if none)."""
    experiment, started = selected(step), step.services.clock()
    snapshot = _snapshot(step)
    step.change(acquisition=Acquisition(kind, experiment, step.state.proposal, started, snapshot))
    return _missing_note(snapshot)


def end_acquisition(step: Step, *, everything_new: bool = False) -> tuple[str, bool]:
    """Write the record of the acquisition that ended and queue its dataset: (sentence, warning).

    The acquisition is forgotten first, so whatever fails below is said once; it is recorded under
    the experiment it was started for. `everything_new` (the Catalog command, a DaqStop of no
    acquisition this IOC started): when no file was sent, nothing is written."""
    acquisition = step.state.acquisition
    step.change(acquisition=None)
    if acquisition is None:
        acquisition = Acquisition("catalog", selected(step), step.state.proposal)
    experiment = acquisition.experiment
    if experiment.name not in step.state.experiments and not _still_there(step, experiment):
        gone = f"experiment {experiment.name} was deleted before its {acquisition.kind} was catalogued"
        log.warning("catalogue: %s", gone)
        return f"{gone}: no dataset made", True
    try:
        records = _records(step).open(experiment.storage_directory)
    except OSError as error:
        return _not_written(Path(experiment.storage_directory) / RECORDS_FOLDER, error)
    try:
        return _record(step, acquisition, records, everything_new=everything_new)
    finally:
        records.close()


def _records(step: Step) -> Records:
    records = step.services.adapters.records
    if records is None:
        raise RuntimeError("these adapters have no records: build_adapters wires them")
    return records


def _still_there(step: Step, experiment: Experiment) -> bool:
    """Whether DM still has `experiment`, which the station's list no longer names (deleted meanwhile?)."""
    services = step.services
    return services.contact("DM", services.adapters.dm.get_experiment, experiment.name) is not None


def _record(step: Step, acquisition: Acquisition, records: RecordsFolder, *, everything_new: bool) -> tuple[str, bool]:
    """The record of `acquisition` in `records`, its dataset queued first: (sentence, warning)."""
    services, experiment = step.services, acquisition.experiment
    previous, skipped = records.newest(experiment.name, services.clock().timestamp() + CLOCK_SLACK)
    skipped_note = _skipped_note(records.path, skipped)
    mark = previous.mark if previous else 0.0
    end_snapshot = _snapshot(step)
    taken_at = services.clock()
    listed = services.contact(services.transfer_system, services.adapters.transfer.sent_since, mark,
                              experiment.storage_directory)  # fmt: skip
    with _reading(listed) as files:  # read as it is iterated: a failure is noted under its system (contact)
        first = services.contact(None, next, files, None)
        if everything_new and first is None:
            return _joined("no file was sent since the last dataset: no dataset made", skipped_note), bool(skipped)
        number = records.next_number(experiment.name)
        fields = {
            "n": number,
            "ended": taken_at.isoformat(),
            "proposal": _proposal_fields(experiment, acquisition.proposal),
            "experiment": experiment.name,
            "acquisition": acquisition.kind,
            "storage_directory": experiment.storage_directory,
            "started": _time_or(acquisition.started or (previous.ended if previous else None), taken_at),
            "snapshots": {"start": acquisition.snapshot, "end": end_snapshot},
        }
        catalogue = services.adapters.catalogue
        dataset, unsent = _dataset(step, acquisition, fields) if catalogue is not None else (None, "")
        if dataset is not None:
            dataset = replace(dataset, name=f"{experiment.name}-{number}", run_number=str(number))
            fields["pid"] = dataset.pid
        staged_in = catalogue if dataset is not None else None
        listed_all = itertools.chain(() if first is None else (first,), files)
        try:
            aside, staged, totals = services.contact(None, _write_aside, records, fields, listed_all, mark,
                                                     staged_in, dataset)  # fmt: skip
        except OSError as error:
            return _not_written(records.path, error)
    try:
        if staged is not None:  # queued first: no record counts files no dataset has
            services.contact(None, staged.commit)
    except BaseException:
        if staged is not None:
            staged.drop()
        records.discard(aside.name)
        raise
    try:
        path = records.put_in_place(aside.name, experiment.name, number)
    except OSError as error:  # a rename in the folder: hardly ever
        records.discard(aside.name)
        log.warning("metadata record not put in place in %s: %s", records.path, error)
        queued = f"; its dataset is queued for SciCat as {dataset.pid}" if dataset is not None else ""
        return f"metadata record not written in {records.path}: {error.strerror or error}{queued}", True
    text = json.dumps(fields["snapshots"], ensure_ascii=False, separators=(",", ":"))  # compact: it fits the PV
    step.change(metadata_last=text)
    missing = _missing_note(acquisition.snapshot, end_snapshot)  # one at the start may answer at the end
    sentence = f"dataset {path.name}: {plural(totals.files, 'file')}, {totals.size} bytes"
    if dataset is not None:
        sentence += f"; queued for SciCat as {dataset.pid}"
    elif unsent:
        log.warning("catalogue: %s not sent to SciCat: %s", path.name, unsent)
        sentence += f"; not sent to SciCat: {unsent}"
    return _joined(sentence, missing, skipped_note), bool(missing or unsent or skipped)


@dataclass
class _Totals:
    """What a record's file list holds: how many files, their bytes, the newest `sent_at`."""

    files: int = 0
    size: int = 0
    newest: float = 0.0


def _write_aside(
    records: RecordsFolder,
    fields: dict,
    files: Iterator[SentFile],
    mark: float,
    catalogue: Catalogue | None,
    dataset: Dataset | None,
) -> tuple[AsideRecord, StagedDataset | None, _Totals]:
    """The record aside, whole and on disk, and its dataset staged in `catalogue` (not queued yet), both made of
    `files` as they are read; their totals. When anything fails, nothing of either is left (OSError: the
    record's; QueueFull, CatalogError: the queue's)."""
    aside = records.begin_aside(fields)
    try:
        staged = catalogue.stage(dataset) if catalogue is not None and dataset is not None else None
    except BaseException:
        records.discard(aside.name)
        raise
    try:
        totals = _write_files(str(fields["storage_directory"]), files, aside, staged)
        aside.finish({"mark": max(mark, totals.newest), "number_of_files": totals.files, "size": totals.size})
    except BaseException:
        if staged is not None:
            staged.drop()
        records.discard(aside.name)
        raise
    return aside, staged, totals


def _write_files(storage: str, files: Iterator[SentFile], aside: AsideRecord,
                 staged: StagedDataset | None) -> _Totals:  # fmt: skip
    """`files` into the record aside and the dataset staged in the queue, as they come (BATCH at a time); their
    totals."""
    totals, times = _Totals(), _UtcTimes()
    inside = os.path.normpath(storage).rstrip("/") + "/"
    while sent := list(itertools.islice(files, BATCH)):
        batch = [_catalog_file(inside, file, times) for file in sent]
        aside.add(batch)
        if staged is not None:
            staged.add(batch)
        totals.files += len(batch)
        totals.size += sum(map(_SIZE, batch))
        totals.newest = max(totals.newest, *map(_SENT_AT, sent))
    return totals


@contextlib.contextmanager
def _reading(listed: Iterable[SentFile]) -> Iterator[Iterator[SentFile]]:
    """`listed` to be read once; closed after (a listing read as it is iterated holds its ledger open)."""
    files = iter(listed)
    try:
        yield files
    finally:
        close = getattr(files, "close", None)
        if close is not None:
            close()


def _dataset(step: Step, acquisition: Acquisition, record: dict) -> tuple[Dataset | None, str]:
    """The record as the catalogue's raw dataset, with a pid chosen here, once (it is never sent twice);
    or None and why, when it lacks what SciCat needs of every dataset (its owner group, a contact).

    The contact is the PI's address where SciCat takes it (then also the owner's), else the beamline's
    (scicat.contact_email)."""
    settings = step.services.settings
    scicat, experiment, proposal = settings.scicat, acquisition.experiment, acquisition.proposal
    pi = proposal.pi if proposal else None
    pi_email = pi.email.strip() if pi and pi.email else ""
    owner_email = "" if catalog_email_problem(pi_email) else pi_email
    name = pi.full_name if pi and pi.full_name else next((u.name for u in experiment.users if u.name), "")
    group = scicat.owner_group.format(gup=experiment.gup, beamline=settings.beamline.name,
                                      station=settings.beamline.station)  # fmt: skip
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
        files=(),  # added as the record's file list is read
        scientific_metadata={
            "experiment": experiment.name,
            "acquisition": record["acquisition"],
            "snapshots": record["snapshots"],
        },  # fmt: skip
        owner_email=owner_email,
        source_folder_host=scicat.source_folder_host,
    ), ""


def _snapshot(step: Step) -> dict | None:
    """The metadata PVs now (None when metadata.pvs names none)."""
    services = step.services
    pvs, metadata = services.settings.metadata.pvs, services.adapters.metadata
    if not pvs or metadata is None:
        return None
    return {"taken": services.clock().isoformat(), "pvs": metadata.read(pvs)}


def _catalog_file(inside: str, sent: SentFile, times: _UtcTimes) -> CatalogFile:
    """A file of the record and the dataset: its path in the experiment's storage (`inside`, ending in /), size,
    mtime, and the checksum the transfer has (the APS DM's md5, the built-in engine's blake2b with dm.checksum),
    none without one."""
    path = sent.path[len(inside) :] if sent.path.startswith(inside) else ""
    if not path or path[-1] == "/" or path[0] == "." or "//" in path or "/." in path:
        path = os.path.relpath(sent.path, inside)  # not plain: as relpath has it
    if not path.isascii():  # a name that is not UTF-8 is kept readable, its odd bytes as \xNN (as Status shows it)
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
    return CatalogFile(path, sent.size, times.text(sent.mtime), sent.checksum)


class _UtcTimes:
    """A time in seconds since the epoch as `datetime.fromtimestamp(seconds, timezone.utc).isoformat()` writes it
    (to the microsecond, rounded half to even), each second's date and time made once: an acquisition's files
    come many a second."""

    def __init__(self) -> None:
        self._whole, self._second = math.nan, ""  # the last second made, its text without fraction nor offset

    def text(self, seconds: float) -> str:
        fraction, whole = math.modf(seconds)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            whole, micro = whole + 1, micro - 1_000_000
        elif micro < 0:
            whole, micro = whole - 1, micro + 1_000_000
        if whole != self._whole:
            self._whole, self._second = whole, datetime.fromtimestamp(whole, timezone.utc).isoformat()[:19]
        return f"{self._second}.{micro:06d}+00:00" if micro else f"{self._second}+00:00"


# ---------------------------------------------------------------- what a record says, in sentences


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
