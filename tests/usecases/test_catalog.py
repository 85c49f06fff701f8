"""The catalogue: metadata snapshots at the start and end of each acquisition, and its record next to the data."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import threading
import tracemalloc
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from dmagic_ioc.adapters.dm.marker import write_storage_marker
from dmagic_ioc.adapters.records import AsideRecord, RecordsRefused
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.app.commands.catalog import _UtcTimes
from dmagic_ioc.ioc.app.messages import Catalog, CreateManual, DaqStart, DaqStop, Delete, Upload, UploadEnded
from dmagic_ioc.ioc.app.queries import Queries
from dmagic_ioc.ioc.app.state import ManualRequest, Outcome
from dmagic_ioc.ioc.domain.catalog_ports import CatalogStatus
from dmagic_ioc.ioc.domain.errors import DiskFull, DMError
from dmagic_ioc.ioc.domain.ports import SentFile, TransferProgress, TransferState
from dmagic_ioc.ioc.settings.schema import MetadataSettings, ScicatSettings
from hypothesis import given, settings
from hypothesis import strategies as st

from ..fakes.ports import EXPERIMENT, NOW, FakeTransfer
from ..helpers import wait_for

ENERGY = {"pv": "bl:Energy", "value": 25.5, "units": "keV", "severity": "NO", "timestamp": "2026-10-15T15:00:00+00:00"}
GONE = {"pv": "bl:Gone", "missing": True, "why": "no answer within 2 s"}


class FakeMetadata:
    def __init__(self, answers: dict[str, dict]):
        self.answers = answers
        self.reads: list[dict] = []

    def read(self, pvs):
        self.reads.append(dict(pvs))
        return {key: self.answers[key] for key in pvs}


def with_metadata(beamline, fakes, answers: dict[str, dict]) -> FakeMetadata:
    metadata = FakeMetadata(answers)
    beamline.adapters.metadata = metadata
    pvs = {key: entry["pv"] for key, entry in answers.items()}
    beamline.services.settings = replace(beamline.settings, metadata=MetadataSettings(pvs=pvs))
    return metadata


def sent(fakes, storage, relpath: str, size: int, at: float) -> None:
    fakes.transfer.sent.append(SentFile(f"{storage}/{relpath}", size, 1_760_000_000.0, at))


def records(storage) -> list[dict]:
    folder = storage / "metadata"
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{EXPERIMENT}-*.json"))] if folder.exists() else []


def storage_of(tmp_path):
    return tmp_path / "storage" / "2026-10" / EXPERIMENT


def test_daq_start_and_stop_write_both_snapshots_the_proposal_and_the_files_sent(created, fakes, tmp_path):
    metadata = with_metadata(created, fakes, {"energy": ENERGY})
    storage = storage_of(tmp_path)
    assert created.run(DaqStart()) == Outcome(f"transfer of {EXPERIMENT} started")
    sent(fakes, storage, "data/scan1/proj_000.h5", 100, 10.0)
    sent(fakes, storage, "analysis/recon.tiff", 23, 11.0)
    sent(fakes, tmp_path / "storage" / "elsewhere", "data/x.h5", 5, 11.0)  # another experiment's: not listed
    outcome = created.run(DaqStop())
    assert outcome == Outcome(f"transfer stopped; dataset {EXPERIMENT}-1.json: 2 files, 123 bytes")
    assert len(metadata.reads) == 2  # at the start and at the end
    (record,) = records(storage)
    assert record["n"] == 1 and record["experiment"] == EXPERIMENT and record["acquisition"] == "daq"
    assert record["proposal"]["gup"] == "1012039"
    assert record["proposal"]["pi"]["email"] == "mei@example.edu"
    assert record["snapshots"]["start"]["pvs"] == {"energy": ENERGY}
    assert record["snapshots"]["end"]["pvs"] == {"energy": ENERGY}
    assert [(f["path"], f["size"]) for f in record["files"]] == [("data/scan1/proj_000.h5", 100),
                                                                 ("analysis/recon.tiff", 23)]  # fmt: skip
    assert record["number_of_files"] == 2 and record["size"] == 123
    assert json.loads(created.state.metadata_last) == record["snapshots"]
    assert not list((storage / "metadata").glob(".record-*"))  # written aside, renamed


def test_the_next_dataset_lists_only_the_files_sent_since_the_last(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    created.run(DaqStart())
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    created.run(DaqStop())
    assert created.run(Catalog()) == Outcome("no file was sent since the last dataset: no dataset made")
    sent(fakes, storage, "data/b.h5", 2, 20.0)
    assert created.run(Catalog()) == Outcome(f"dataset {EXPERIMENT}-2.json: 1 file, 2 bytes")
    assert [[f["path"] for f in r["files"]] for r in records(storage)] == [["data/a.h5"], ["data/b.h5"]]
    assert records(storage)[1]["snapshots"] == {"start": None, "end": None}  # metadata.pvs names none


def test_a_pv_that_does_not_answer_is_recorded_missing_with_a_warning_and_the_dataset_is_made(created, fakes, tmp_path):
    with_metadata(created, fakes, {"energy": ENERGY, "gone": GONE})
    start = created.run(DaqStart())
    assert start.warning and "bl:Gone" in start.message
    sent(fakes, storage_of(tmp_path), "data/a.h5", 1, 10.0)
    stop = created.run(DaqStop())
    assert stop.warning and "metadata: bl:Gone did not answer, recorded as missing" in stop.message
    (record,) = records(storage_of(tmp_path))
    assert record["snapshots"]["end"]["pvs"]["gone"] == GONE


def test_an_upload_is_catalogued_when_it_has_ended_and_only_once(created, fakes, tmp_path):
    created.run(Upload())
    assert created.state.uploading
    assert created.run(UploadEnded()) == Outcome("")  # still running: nothing yet
    sent(fakes, storage_of(tmp_path), "data/a.h5", 7, 10.0)
    fakes.transfer.state = TransferProgress(state=TransferState.STOPPED)
    assert created.run(UploadEnded()) == Outcome(f"upload catalogued: dataset {EXPERIMENT}-1.json: 1 file, 7 bytes")
    assert created.run(UploadEnded()) == Outcome("")
    assert len(records(storage_of(tmp_path))) == 1


def test_a_storage_that_is_gone_is_a_warning_and_its_files_go_into_the_next_dataset(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    created.run(DaqStart())
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    storage.rename(storage.with_name("unmounted"))
    outcome = created.run(DaqStop())
    assert outcome.warning and f"metadata record not written in {storage}/metadata: No such file" in outcome.message
    storage.with_name("unmounted").rename(storage)
    assert created.run(Catalog()).message == f"dataset {EXPERIMENT}-1.json: 1 file, 1 bytes"


def test_the_records_are_the_iocs_alone_readable_as_the_data_and_their_first_line_is_their_head(
    created, fakes, tmp_path
):
    storage = storage_of(tmp_path)
    storage.chmod(0o2770)  # as the DM makes it: the proposal group writes it
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    created.run(Catalog())
    folder, record = storage / "metadata", storage / "metadata" / f"{EXPERIMENT}-1.json"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o2750 and stat.S_IMODE(record.stat().st_mode) == 0o640
    assert folder.stat().st_gid == record.stat().st_gid == storage.stat().st_gid
    first = record.read_text().splitlines()[0]
    assert first == '{"n": 1, "mark": 10.0, "ended": "2026-10-15T15:00:00+00:00",', first
    assert json.loads(record.read_text())["files"][0]["path"] == "data/a.h5"  # one JSON document all the same


def plant(folder, name: str, mark: float, *, mode: int = 0o640, uid: int | None = None, n: int = 0) -> None:
    """A record as the IOC writes one (its head first), numbered as `name` says unless `n`, with `mark`."""
    path = folder / name
    number = n or int(name.rsplit("-", 1)[1].split(".")[0])
    head = json.dumps({"n": number, "mark": mark, "ended": "2026-10-15T14:45:00+00:00"})
    path.write_text(head[:-1] + ',\n "files": []\n}\n')
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, -1)


@pytest.mark.skipif(os.geteuid() != 0, reason="plants records of another user: needs root")
def test_what_the_iocs_user_did_not_write_alone_is_skipped_named_and_never_hides_a_file(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    created.run(Catalog())
    folder = storage / "metadata"
    os.mkfifo(folder / f"{EXPERIMENT}-9.json")  # would hang a read
    (folder / f"{EXPERIMENT}-8.json").symlink_to("/proc/self/environ")
    plant(folder, f"{EXPERIMENT}-7.json", 1e18, mode=0o660)  # writable by the proposal group
    plant(folder, f"{EXPERIMENT}-6.json", 1e18, uid=54321)  # a group member's
    plant(folder, f"{EXPERIMENT}-5.json", 1e18)  # the IOC's user's, but a mark no transfer gave
    plant(folder, f"{EXPERIMENT}-4.json", 50.0, n=3)  # renamed from another number
    (folder / f"{EXPERIMENT}-3.json").write_text(json.dumps({"n": 3, "mark": 1e18}))  # no head line
    sent(fakes, storage, "data/b.h5", 2, 20.0)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (created.run(Catalog()), finished.set()), daemon=True)
    worker.start()
    assert finished.wait(30), "the FIFO planted as a record hung the command"
    record = json.loads((folder / f"{EXPERIMENT}-10.json").read_text())  # not records(): a FIFO is among them
    assert [f["path"] for f in record["files"]] == ["data/b.h5"]  # since record 1, the last the IOC wrote
    sent(fakes, storage, "data/c.h5", 3, 30.0)
    outcome = created.run(Catalog())
    assert outcome == Outcome(f"dataset {EXPERIMENT}-11.json: 1 file, 3 bytes")  # the planted ones said once


@pytest.mark.skipif(os.geteuid() != 0, reason="plants records of another user: needs root")
def test_the_skipped_records_are_named_on_status_with_why(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    (storage / "metadata").mkdir()
    os.mkfifo(storage / "metadata" / f"{EXPERIMENT}-3.json")
    plant(storage / "metadata", f"{EXPERIMENT}-2.json", 1e18, uid=54321)
    plant(storage / "metadata", f"{EXPERIMENT}-1.json", 1e18, mode=0o620)
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    outcome = created.run(Catalog())
    assert outcome.warning and outcome.message == (
        f"dataset {EXPERIMENT}-4.json: 1 file, 1 bytes; metadata: skipped in {storage}/metadata, not records of the "
        f"IOC: {EXPERIMENT}-3.json (not a regular file); {EXPERIMENT}-2.json (owned by uid 54321); "
        f"{EXPERIMENT}-1.json (writable by its group or others)"
    )


def test_a_record_an_earlier_version_wrote_keeps_its_mark_after_an_upgrade(created, fakes, tmp_path):
    """The earlier version wrote indented JSON, 0600, no head line: read whole, its files are not listed again."""
    storage = storage_of(tmp_path)
    (storage / "metadata").mkdir(mode=0o750)
    earlier = storage / "metadata" / f"{EXPERIMENT}-1.json"
    earlier.write_text(json.dumps({"n": 1, "mark": 10.0, "ended": "2026-10-15T14:45:00+00:00",
                                   "files": [{"path": "data/a.h5"}]}, indent=1))  # fmt: skip
    earlier.chmod(0o600)
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    sent(fakes, storage, "data/b.h5", 2, 20.0)
    outcome = created.run(Catalog())
    assert outcome == Outcome(f"dataset {EXPERIMENT}-2.json: 1 file, 2 bytes"), outcome
    assert [f["path"] for f in json.loads((storage / "metadata" / f"{EXPERIMENT}-2.json").read_text())["files"]] == [
        "data/b.h5"
    ]


def test_an_earlier_versions_folder_writable_by_the_group_is_made_the_iocs_alone(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    (storage / "metadata").mkdir()
    (storage / "metadata").chmod(0o2770)
    plant(storage / "metadata", f"{EXPERIMENT}-1.json", 10.0, mode=0o660)  # as the earlier version wrote it
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    outcome = created.run(Catalog())
    assert outcome.warning and f"{EXPERIMENT}-1.json (writable by its group or others)" in outcome.message
    assert f"dataset {EXPERIMENT}-2.json: 1 file" in outcome.message  # not trusted: its files listed again
    assert stat.S_IMODE((storage / "metadata").stat().st_mode) == 0o2750


@pytest.mark.parametrize("planted", ["symlink", "file", "foreign"])
def test_a_metadata_that_is_not_the_iocs_folder_is_refused_naming_it_and_nothing_is_written(
    created, fakes, tmp_path, planted
):
    storage, elsewhere = storage_of(tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "symlink":
        (storage / "metadata").symlink_to(elsewhere, target_is_directory=True)
    elif planted == "file":
        (storage / "metadata").write_text("a file in the way")
    else:
        if os.geteuid() != 0:
            pytest.skip("a folder of another user: needs root")
        (storage / "metadata").mkdir()
        os.chown(storage / "metadata", 54321, -1)
    catalogue = with_scicat(created)
    created.run(DaqStart())
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    with pytest.raises(RecordsRefused) as refused:
        created.run(DaqStop())
    why = {"symlink": "is a symbolic link, not followed", "file": "is not a folder",
           "foreign": "is not the IOC's folder of records (owned by uid 54321"}[planted]  # fmt: skip
    assert f"metadata record not written: {storage}/metadata {why}" in str(refused.value)
    assert catalogue.submitted == [] and list(elsewhere.iterdir()) == []
    if planted != "file":
        assert not list((storage / "metadata").iterdir())
    assert not created.state.uploading and created.state.acquisition is None  # said once: the acquisition is over


class FakeCatalogue:
    """Keeps each dataset committed in `submitted`, its files with it; `staged` holds the one going in."""

    def __init__(self):
        self.submitted = []
        self.staged = None
        self.answer = CatalogStatus()
        self.full = False  # a full state_dir: the queue takes nothing
        self.counting = False  # keep no file, count them (a large dataset)

    def stage(self, dataset):
        if self.full:
            raise DiskFull(f"state_dir full: dataset {dataset.name} not queued for SciCat: database or disk is full")
        self.staged = FakeStaged(self, dataset)
        return self.staged

    def status(self):
        return self.answer


class FakeStaged:
    """Keeps the files added; with `catalogue.counting`, only how many, their bytes and the last one's path."""

    def __init__(self, catalogue, dataset):
        self.catalogue, self.dataset, self.files = catalogue, dataset, list(dataset.files)
        self.counted, self.size, self.last = 0, 0, ""
        self.dropped = False

    def add(self, files):
        if not self.catalogue.counting:
            self.files.extend(files)
            return
        for file in files:
            self.counted, self.size, self.last = self.counted + 1, self.size + file.size, file.path

    def commit(self):
        self.catalogue.submitted.append(replace(self.dataset, files=tuple(self.files)))

    def drop(self):
        self.dropped = True


def with_scicat(beamline, **changes) -> FakeCatalogue:
    catalogue = FakeCatalogue()
    beamline.adapters.catalogue = catalogue
    scicat = ScicatSettings(enabled=True, owner_group="p{gup}", access_groups=("staff",), creation_location="APS/2-BM",
                            contact_email="2bm@aps.anl.gov", source_folder_host="data.aps.anl.gov")  # fmt: skip
    beamline.services.settings = replace(beamline.settings, scicat=replace(scicat, **changes))
    return catalogue


def with_pi_email(beamline, email: str) -> None:
    proposal = beamline.state.proposal
    people = tuple(replace(p, email=email) if p.is_pi else p for p in proposal.people)
    kept = replace(proposal, proposal=replace(proposal.proposal, people=people))
    beamline.state = replace(beamline.state, proposal=kept)


def test_with_scicat_each_dataset_is_queued_once_with_the_proposals_group_and_the_pi(created, fakes, tmp_path):
    catalogue = with_scicat(created)
    created.run(DaqStart())
    sent(fakes, storage_of(tmp_path), "data/a.h5", 5, 10.0)
    outcome = created.run(DaqStop())
    (dataset,) = catalogue.submitted
    assert f"queued for SciCat as {dataset.pid}" in outcome.message
    assert dataset.owner_group == "p1012039" and dataset.access_groups == ("staff",)
    assert dataset.principal_investigator == "Mei Müller-Łukasiewicz" and dataset.contact_email == "mei@example.edu"
    assert dataset.owner_email == "mei@example.edu" and dataset.source_folder_host == "data.aps.anl.gov"
    assert dataset.name == f"{EXPERIMENT}-1" and dataset.run_number == "1" and dataset.proposal_id == "1012039"
    assert [(f.path, f.size) for f in dataset.files] == [("data/a.h5", 5)]
    assert records(storage_of(tmp_path))[0]["pid"] == dataset.pid


def test_a_pi_without_an_address_scicat_takes_has_the_beamlines_as_contact_and_no_owner_email(created, fakes):
    catalogue = with_scicat(created)
    for email in ("", "mei@localhost", "Mei <mei@example.edu>", "mei@example.edu; pi@example.edu"):
        with_pi_email(created, email)
        assert created.run(DaqStart()).message and not created.run(DaqStop()).warning
        assert (catalogue.submitted[-1].contact_email, catalogue.submitted[-1].owner_email) == ("2bm@aps.anl.gov", "")
    assert len(catalogue.submitted) == 4  # a DaqStop without files is a dataset too: complete once created


def test_a_dataset_scicat_would_refuse_whatever_is_retried_is_not_queued_and_says_why(created, fakes, tmp_path):
    catalogue = with_scicat(created, contact_email="")  # the config refuses that; a test can make it
    with_pi_email(created, "")
    created.run(DaqStart())
    outcome = created.run(DaqStop())
    assert outcome.warning and outcome.message.endswith(
        "not sent to SciCat: no contact: the PI has no e-mail address SciCat takes, and scicat.contact_email is not set"
    )
    with_scicat(created, owner_group="{gup}")
    created.state = replace(created.state, experiment=replace(created.state.experiment, gup=""))
    catalogue = created.adapters.catalogue
    created.run(DaqStart())
    outcome = created.run(DaqStop())
    assert outcome.warning and "not sent to SciCat: scicat.owner_group '{gup}' names no group" in outcome.message
    assert catalogue.submitted == [] and len(records(storage_of(tmp_path))) == 2  # the records are written


def test_each_files_checksum_is_the_one_the_transfer_has_never_computed_again(created, fakes, tmp_path):
    """The APS DM's md5; the built-in engine's blake2b of the source its copy was verified against
    (dm.checksum): the file in storage, which holds other bytes by now, is not read."""
    catalogue = with_scicat(created)
    created.services.settings = replace(created.settings, dm=replace(created.settings.dm, checksum=True))
    storage = storage_of(tmp_path)
    (storage / "data").mkdir(parents=True, exist_ok=True)
    (storage / "data" / "b.h5").write_bytes(b"rewritten since")
    created.run(DaqStart())
    fakes.transfer.sent.append(SentFile(f"{storage}/data/a.h5", 5, 1_760_000_000.0, 10.0, "md5:" + "0" * 32))
    blake2b = "blake2b:" + hashlib.blake2b(b"frames").hexdigest()
    fakes.transfer.sent.append(SentFile(f"{storage}/data/b.h5", 6, 1_760_000_000.0, 11.0, blake2b))
    created.run(DaqStop())
    (dataset,) = catalogue.submitted
    assert [f.checksum for f in dataset.files] == [
        "md5:" + "0" * 32,
        "blake2b:" + hashlib.blake2b(b"frames").hexdigest(),
    ]
    assert [f["checksum"] for f in records(storage)[0]["files"]] == ["md5:" + "0" * 32, blake2b]


def test_an_upload_by_the_built_in_transfer_lists_the_checksum_each_copy_was_verified_against(created, tmp_path):
    """The real engine and records end to end: Upload, its end, its dataset with the engine's blake2b."""
    storage = storage_of(tmp_path)
    for subdir in ("data", "analysis"):  # as the local DM makes them at Create, with the storage's marker
        (storage / subdir).mkdir()
    write_storage_marker(storage, EXPERIMENT)
    raw = tmp_path / "data" / EXPERIMENT / "scan"
    raw.mkdir(parents=True)
    (raw / "a.h5").write_bytes(b"frames")
    created.services.settings = replace(created.settings, dm=replace(created.settings.dm, checksum=True))
    transfer = LocalTransfer(tmp_path / "state" / "transfers.sqlite", settle_time=0.0, checksum=True,
                             poll_interval=0.05, source_top=tmp_path / "data")  # fmt: skip
    created.adapters.transfer = transfer
    try:
        created.run(Upload())
        wait_for(lambda: transfer.progress().state == TransferState.STOPPED, what="the upload to end")
        outcome = created.run(UploadEnded())
    finally:
        transfer.close()
    assert outcome.message.endswith(f"dataset {EXPERIMENT}-1.json: 1 file, 6 bytes"), outcome
    (record,) = records(storage)
    assert [(f["path"], f["checksum"]) for f in record["files"]] == [
        ("data/scan/a.h5", "blake2b:" + hashlib.blake2b(b"frames").hexdigest())
    ]


def test_the_catalogues_last_contact_goes_to_its_health(created):
    catalogue = FakeCatalogue()
    created.adapters.catalogue = catalogue
    queries = Queries(created.services)
    assert queries.catalog_status() == CatalogStatus() and created.contacts() == []  # no attempt yet
    catalogue.answer = CatalogStatus(pending=1, answered=False, message="SciCat at x did not answer")
    assert queries.catalog_status().pending == 1
    assert created.contacts() == [("Catalog", False)]


def test_a_dataset_waiting_past_stuck_after_is_an_error_naming_it_however_scicat_answers(created, caplog):
    catalogue = FakeCatalogue()
    created.adapters.catalogue = catalogue
    queries = Queries(created.services)
    created.services.settings = replace(created.settings, scicat=ScicatSettings(enabled=True, stuck_after=900))
    waiting = CatalogStatus(pending=2, answered=True, oldest_pid="p-1", waiting_since=NOW - timedelta(seconds=900))
    catalogue.answer = waiting
    assert queries.catalog_status() == waiting and created.contacts() == [("Catalog", True)]  # not yet

    since = "since 2026-10-15 09:44 CDT, scicat.stuck_after"
    down = "SciCat at x did not answer within 10 s"
    for answered, message, why in ((True, "", "SciCat answers slowly"),  # the last round went well
                                   (None, "", "SciCat has not answered yet"),  # still in its first round
                                   (False, down, down)):  # fmt: skip
        catalogue.answer = replace(
            waiting, answered=answered, message=message, waiting_since=NOW - timedelta(seconds=901)
        )
        status = queries.catalog_status()
        assert status.answered is False and created.contacts() == [("Catalog", False)]
        assert status.message == f"dataset p-1 and 1 other waiting for SciCat for more than 15 min ({since}): {why}"
        assert status.pending == 2 and status.oldest_pid == "p-1"
    assert caplog.text.count("waiting for SciCat for more than 15 min") == 1  # polled twice a second: logged once

    created.services.settings = replace(created.settings, scicat=ScicatSettings(enabled=True, stuck_after=3 * 3600))
    catalogue.answer = replace(waiting, pending=1, waiting_since=NOW - timedelta(hours=3, minutes=1))
    assert "dataset p-1 waiting for SciCat for more than 3 h (" in queries.catalog_status().message


def test_a_dataset_the_queue_cannot_take_writes_no_record_and_its_files_go_into_the_next(created, fakes, tmp_path):
    catalogue = with_scicat(created)
    storage = storage_of(tmp_path)
    created.run(DaqStart())
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    catalogue.full = True
    with pytest.raises(DiskFull, match=f"state_dir full: dataset {EXPERIMENT}-1 not queued for SciCat"):
        created.run(DaqStop())
    assert records(storage) == [] and not list((storage / "metadata").iterdir())  # nor the one written aside
    catalogue.full = False  # space is back
    outcome = created.run(Catalog())
    (dataset,) = catalogue.submitted
    assert outcome.message.startswith(f"dataset {EXPERIMENT}-1.json: 1 file, 1 bytes; queued for SciCat as ")
    assert [f.path for f in dataset.files] == ["data/a.h5"] and dataset.name == f"{EXPERIMENT}-1"
    assert records(storage)[0]["pid"] == dataset.pid


def test_an_upload_whose_experiment_is_deleted_before_it_is_catalogued_says_so_once(created, fakes, tmp_path):
    created.run(Upload())
    sent(fakes, storage_of(tmp_path), "data/a.h5", 7, 10.0)
    fakes.transfer.state = TransferProgress(state=TransferState.STOPPED, message="upload finished")
    created.run(Delete(EXPERIMENT))  # lands before the poll that sees the upload's end
    outcome = created.run(UploadEnded())
    assert outcome == Outcome(f"upload finished; experiment {EXPERIMENT} was deleted before its upload was "
                              "catalogued: no dataset made", warning=True)  # fmt: skip
    assert created.run(UploadEnded()) == Outcome("") and not created.state.uploading


def test_an_upload_is_catalogued_under_its_experiment_whatever_was_selected_since(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    created.run(Upload())
    sent(fakes, storage, "data/a.h5", 7, 10.0)
    fakes.transfer.state = TransferProgress(state=TransferState.STOPPED)
    created.run(CreateManual(ManualRequest()))  # another experiment selected before the upload's end is seen
    assert created.state.experiment.name != EXPERIMENT
    assert created.run(UploadEnded()).message == f"upload catalogued: dataset {EXPERIMENT}-1.json: 1 file, 7 bytes"
    (record,) = records(storage)
    assert record["experiment"] == EXPERIMENT and record["proposal"]["gup"] == "1012039"
    assert record["proposal"]["pi"]["email"] == "mei@example.edu"


@pytest.mark.parametrize("swapped", ["fifo", "symlink", "grown"])
def test_a_data_file_swapped_after_it_was_sent_gets_no_checksum_and_never_hangs(created, fakes, tmp_path, swapped):
    """A file the transfer gave no checksum gets none, whatever dm.checksum says: the command opens no data file."""
    created.services.settings = replace(created.settings, dm=replace(created.settings.dm, checksum=True))
    storage = storage_of(tmp_path)
    (storage / "data").mkdir()
    target = storage / "data" / "b.h5"
    if swapped == "fifo":
        os.mkfifo(target)
    elif swapped == "symlink":
        (tmp_path / "secret").write_bytes(b"frames")
        target.symlink_to(tmp_path / "secret")
    else:
        target.write_bytes(b"frames and more")
    sent(fakes, storage, "data/b.h5", 6, 11.0)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (created.run(Catalog()), finished.set()), daemon=True)
    worker.start()
    assert finished.wait(30), "a FIFO swapped in for a data file hung the command"
    (record,) = records(storage)
    assert record["files"] == [{"path": "data/b.h5", "size": 6, "mtime": "2025-10-09T08:53:20+00:00"}]


# ------------------------------------------------------------------ a large acquisition: streamed


class OnePassTransfer(FakeTransfer):
    """A transfer whose record lists `count` files, made as they are read, the last `failing_at` raising: the
    list may be read once (a second read fails the test), as the built-in engine reads its ledger."""

    def __init__(self, storage, count: int, failing_at: int | None = None):
        super().__init__()
        self.storage, self.count, self.failing_at, self.reads = storage, count, failing_at, 0

    def sent_since(self, mark, storage):
        self.reads += 1
        assert self.reads == 1, "the file list was read twice"
        return self._files(mark)

    def _files(self, mark):
        for i in range(self.count):
            if i == self.failing_at:
                raise DMError("cannot use the transfer ledger transfers.sqlite: disk I/O error")
            if 10.0 + i > mark:
                yield SentFile(f"{self.storage}/data/scan{i // 1000:03d}/proj_{i:06d}.h5", 1000 + i % 7,
                               1_760_000_000.0 + i / 8, 10.0 + i, f"blake2b:{i:0128x}")  # fmt: skip


def test_a_dataset_of_100000_files_is_read_once_and_never_held_whole(created, tmp_path):
    """Each file goes into the record and the queue as it comes, its totals counted on the way: at a million
    files, the whole list in memory (each file's SentFile, CatalogFile and record entry) would be gigabytes."""
    storage, count = storage_of(tmp_path), 100_000
    created.adapters.transfer = OnePassTransfer(storage, count)
    catalogue = with_scicat(created)
    catalogue.counting = True
    created.run(DaqStart())
    tracemalloc.start()
    try:
        outcome = created.run(DaqStop())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = sum(1000 + i % 7 for i in range(count))
    assert f"dataset {EXPERIMENT}-1.json: 100000 files, {size} bytes; queued for SciCat as " in outcome.message
    assert peak < 16 << 20, f"{peak >> 20} MB held at the peak"  # the list whole: over 100 MB
    staged = catalogue.staged
    assert (staged.counted, staged.size, staged.last) == (count, size, "data/scan099/proj_099999.h5")
    (dataset,) = catalogue.submitted
    record_path = storage / "metadata" / f"{EXPERIMENT}-1.json"
    with record_path.open(encoding="utf-8") as record_file:
        first = record_file.readline()
    assert first == f'{{"n": 1, "mark": {10.0 + count - 1}, "ended": "2026-10-15T15:00:00+00:00",\n'
    record = json.loads(record_path.read_text(encoding="utf-8"))
    assert record["number_of_files"] == len(record["files"]) == count and record["size"] == size
    assert record["files"][-1] == {"path": "data/scan099/proj_099999.h5", "size": 1000 + 99_999 % 7,
                                   "mtime": "2025-10-09T12:21:39.875000+00:00",  # 1_760_000_000 + 99_999 / 8
                                   "checksum": f"blake2b:{99_999:0128x}"}  # fmt: skip
    assert record["pid"] == dataset.pid and record["format"] == 2


def test_a_record_is_one_json_document_its_head_first_one_file_a_line_its_totals_after_them(created, fakes, tmp_path):
    storage = storage_of(tmp_path)
    sent(fakes, storage, "data/a.h5", 1, 10.0)
    sent(fakes, storage, 'data/"b" é.h5', 2, 20.0)
    created.run(Catalog())
    lines = (storage / "metadata" / f"{EXPERIMENT}-1.json").read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"n": 1, "mark": 20.0, "ended": "2026-10-15T15:00:00+00:00",'
    assert lines[1].strip() == '"format": 2,'  # after the room kept for the head, written last
    at = lines.index(' "files": [')
    assert lines[at + 1 : at + 3] == [
        '  {"path": "data/a.h5", "size": 1, "mtime": "2025-10-09T08:53:20+00:00"},',
        '  {"path": "data/\\"b\\" é.h5", "size": 2, "mtime": "2025-10-09T08:53:20+00:00"}',
    ]
    assert lines[at + 3 :] == [" ],", ' "number_of_files": 2,', ' "size": 3', "}"]


def test_a_list_that_fails_half_read_leaves_no_record_nor_dataset_and_is_read_again_whole(created, tmp_path):
    storage = storage_of(tmp_path)
    created.adapters.transfer = OnePassTransfer(storage, 2500, failing_at=1500)
    catalogue = with_scicat(created)
    created.run(DaqStart())
    created.contacts()
    with pytest.raises(DMError, match="disk I/O error"):
        created.run(DaqStop())
    assert created.contacts() == [("DM", False)]  # on DM's Health, as when the list is read at once
    assert catalogue.submitted == [] and catalogue.staged.dropped
    assert not list((storage / "metadata").iterdir())  # nor the record written aside
    created.adapters.transfer = OnePassTransfer(storage, 2500)  # the ledger answers again
    outcome = created.run(Catalog())
    assert outcome.message.startswith(f"dataset {EXPERIMENT}-1.json: 2500 files, ")
    (dataset,) = catalogue.submitted
    assert len(dataset.files) == 2500 and records(storage)[0]["mark"] == 10.0 + 2499


def test_a_storage_full_while_the_record_is_written_fails_the_command_and_queues_nothing(
    created, tmp_path, monkeypatch
):
    storage = storage_of(tmp_path)
    created.adapters.transfer = OnePassTransfer(storage, 3000)
    catalogue = with_scicat(created)
    written = []

    def add(self, files):  # the storage fills up after the first thousand files
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real_add(self, files))

    real_add = AsideRecord.add
    monkeypatch.setattr(AsideRecord, "add", add)
    created.run(DaqStart())
    with pytest.raises(DiskFull, match=f"storage full: metadata record not written in {storage}/metadata: No space"):
        created.run(DaqStop())
    assert catalogue.staged.dropped and catalogue.submitted == [] and not list((storage / "metadata").iterdir())


@settings(max_examples=500, deadline=None)
@given(seconds=st.one_of(st.floats(-1e10, 2.5e11), st.integers(0, 4 * 10**18).map(lambda ns: ns / 1e9),
                         st.integers(0, 4 * 10**9).map(lambda s: s + 0.5e-6)))  # fmt: skip
def test_a_files_time_is_what_datetime_says_of_it(seconds):
    assert _UtcTimes().text(seconds) == datetime.fromtimestamp(seconds, timezone.utc).isoformat()
