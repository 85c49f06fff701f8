"""ApsDM and ApsDaq against a fake of the APS DM SDK (tests/fakes/dm) with the documented shapes."""

from __future__ import annotations

import importlib
import logging
import re
import stat
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import pytest
from dmagic_ioc.adapters.dm.aps import ApsDM
from dmagic_ioc.adapters.dm.aps_daq import ApsDaq
from dmagic_ioc.adapters.dm.aps_sdk import parse_sdk_date, sdk_date, sdk_field
from dmagic_ioc.ioc.domain.errors import DMError, InputError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.domain.people import Person
from dmagic_ioc.ioc.domain.ports import SentFile, TransferProgress, TransferState

FAKES = Path(__file__).resolve().parents[1] / "fakes"
CHICAGO = timezone(timedelta(hours=-5))
NAME = "2026-10-Smith-1234"


@pytest.fixture
def fake_dm(monkeypatch):
    """The fake SDK importable as `dm`, fresh for each test, gone afterwards."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "dm", raising=False)
    module = importlib.import_module("dm")
    module.reset()
    yield module
    sys.modules.pop("dm", None)


@pytest.fixture
def data_top_dir(tmp_path):
    path = tmp_path / "data3" / "2BM"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def aps(fake_dm, data_top_dir):
    return ApsDM("2BM", data_top_dir, tz=CHICAGO)


def experiment(**changes) -> Experiment:
    values = dict(
        name=NAME,
        title="Fossil teeth",
        gup="1234",
        esaf="271828",
        start=datetime(2026, 10, 14, 8, tzinfo=CHICAGO),
        end=datetime(2026, 10, 17, 8, tzinfo=CHICAGO),
        year_month="2026-10",
    )
    values.update(changes)
    return Experiment(**values)


# ---------------------------------------------------------------------- import and helpers


def test_missing_sdk_is_a_clear_dm_error(monkeypatch, data_top_dir):
    monkeypatch.setitem(sys.modules, "dm", None)  # makes `import dm` fail
    message = "the APS DM SDK (python package 'dm') is not installed; install it or use dm.backend: local"
    with pytest.raises(DMError, match=re.escape(message)):
        ApsDM("2BM", data_top_dir)
    with pytest.raises(DMError, match="not installed"):
        ApsDaq("2BM", data_top_dir, found_record=data_top_dir / "dm-files.sqlite")


def test_module_import_does_not_import_the_sdk():
    check = "import sys, dmagic_ioc.adapters.dm.aps, dmagic_ioc.adapters.dm.aps_daq; assert 'dm' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_sdk_dates():
    assert sdk_date(datetime(2026, 10, 4, 23, tzinfo=CHICAGO)) == "04-Oct-26"
    assert sdk_date(date(2027, 1, 31)) == "31-Jan-27"
    assert sdk_date(None) == ""
    assert parse_sdk_date("14-Oct-26", CHICAGO) == datetime(2026, 10, 14, tzinfo=CHICAGO)
    assert parse_sdk_date("2020-05-26 08:00:00", CHICAGO) == datetime(2020, 5, 26, 8, tzinfo=CHICAGO)
    assert parse_sdk_date("2020-05-26T08:00:00Z") == datetime(2020, 5, 26, 8, tzinfo=timezone.utc)
    assert parse_sdk_date("someday") is None
    assert parse_sdk_date("") is None


def test_sdk_field_reads_dicts_dm_objects_and_attributes(fake_dm):
    class Plain:
        name = "from-attribute"

    assert sdk_field({"name": "a"}, "name") == "a"
    assert sdk_field(fake_dm.DmObject({"name": "b"}), "name") == "b"
    assert sdk_field(Plain(), "name") == "from-attribute"
    assert sdk_field({"x": None, "y": 2}, "x", "y") == 2
    assert sdk_field({}, "name", default="-") == "-"


# ---------------------------------------------------------------------- ApsDM


def test_create_adds_the_experiment_with_sdk_arguments(aps, fake_dm, data_top_dir):
    created, is_new = aps.create_experiment(experiment())
    assert is_new is True
    (args, kwargs) = fake_dm.STATE.called("addExperiment")[0]
    assert args == (NAME,)
    assert kwargs == dict(
        typeName="2BM", description="Fossil teeth", rootPath="2026-10", startDate="14-Oct-26", endDate="17-Oct-26"
    )
    # one key per call, as DMagic writes its metadata: (key, value, experimentName)
    assert fake_dm.STATE.called("upsertExperimentMetadata") == [
        (("gup", "1234", NAME), {}),
        (("esaf", "271828", NAME), {}),
    ]
    assert (created.gup, created.esaf) == ("1234", "271828")  # read back as fields of the experiment
    assert created.storage_directory == f"/gdata/dm/2026-10/{NAME}"
    assert created.data_directory == str(data_top_dir / NAME)
    assert created.year_month == "2026-10"
    assert created.start == datetime(2026, 10, 14, tzinfo=CHICAGO)


def test_dates_are_written_in_the_beamline_time_zone(aps, fake_dm):
    late_evening = datetime(2026, 10, 15, 3, tzinfo=timezone.utc)  # 14 Oct, 22:00 in Chicago
    aps.create_experiment(experiment(start=late_evening))
    assert fake_dm.STATE.called("addExperiment")[0][1]["startDate"] == "14-Oct-26"


def test_create_on_existing_returns_it_unchanged(aps, fake_dm):
    aps.create_experiment(experiment())
    found, is_new = aps.create_experiment(experiment(title="other"))
    assert is_new is False
    assert found.title == "Fossil teeth"
    assert len(fake_dm.STATE.called("addExperiment")) == 1


def test_create_racing_another_client_uses_the_existing_one(aps, fake_dm):
    fake_dm.STATE.fail["getExperimentByName"] = fake_dm.ObjectNotFound("not yet")
    fake_dm.ExperimentDsApi().addExperiment(NAME, typeName="2BM", rootPath="2026-10")
    found, is_new = aps.create_experiment(experiment())
    assert is_new is False
    assert found.name == NAME


def test_create_failure_half_way_then_rerun_completes(aps, fake_dm):
    fake_dm.STATE.fail["upsertExperimentMetadata"] = fake_dm.DmException("metadata service down")
    with pytest.raises(DMError, match="APS DM: writing metadata of .* failed: metadata service down"):
        aps.create_experiment(experiment())
    assert NAME in fake_dm.STATE.experiments  # added, its metadata not written

    found, is_new = aps.create_experiment(experiment())

    assert is_new is False
    assert (found.gup, found.esaf) == ("1234", "271828")
    assert len(fake_dm.STATE.called("addExperiment")) == 1
    assert [args for args, _ in fake_dm.STATE.called("upsertExperimentMetadata")] == [
        ("gup", "1234", NAME),  # refused
        ("gup", "1234", NAME),
        ("esaf", "271828", NAME),
    ]
    aps.create_experiment(experiment())  # once complete, nothing is written again
    assert len(fake_dm.STATE.called("upsertExperimentMetadata")) == 3


def test_the_fake_sdk_refuses_call_forms_its_public_callers_do_not_use(fake_dm):
    """The fake is strict: a call the SDK's callers do not make fails, as the SDK would fail it."""
    api = fake_dm.ExperimentDsApi()
    api.addExperiment(NAME, typeName="2BM", rootPath="2026-10", startDate="14-Oct-26")
    with pytest.raises(TypeError):
        api.upsertExperimentMetadata(NAME, {"gup": "1234"})  # (experiment, dict): the form this IOC once used
    with pytest.raises(fake_dm.ObjectNotFound):
        api.upsertExperimentMetadata(NAME, "gup", "1234")  # the experiment's name first
    with pytest.raises(fake_dm.InvalidRequest):
        api.upsertExperimentMetadata("metadata", {"gup": "1234"}, NAME)
    with pytest.raises(TypeError):
        api.getExperimentsByStation(station="2BM")
    with pytest.raises(fake_dm.InvalidRequest, match="DD-Mon-YY"):
        api.addExperiment("2026-10-Other-1", typeName="2BM", startDate="2026-10-14")
    with pytest.raises(fake_dm.InvalidRequest):
        fake_dm.CatApiFactory.getFileCatApi().getExperimentFiles(NAME, None, 0, 10)


def test_sdk_errors_become_short_dm_errors(aps, fake_dm):
    fake_dm.STATE.fail["addExperiment"] = fake_dm.InvalidRequest("bad   station\n" + "x" * 500)
    with pytest.raises(DMError) as caught:
        aps.create_experiment(experiment())
    assert str(caught.value).startswith(f"APS DM: adding experiment {NAME} failed: bad station x")
    assert len(str(caught.value)) < 300
    fake_dm.STATE.fail["getExperimentsByStation"] = ConnectionError("connection refused")
    with pytest.raises(DMError, match="listing experiments of station 2BM failed: connection refused"):
        aps.list_experiments()


def test_get_and_list_newest_first(aps, fake_dm):
    assert aps.get_experiment(NAME) is None
    for name in ("2026-08-A-1", "2026-10-B-2", "2026-09-C-3"):
        aps.create_experiment(experiment(name=name))
    fake_dm.ExperimentDsApi().addExperiment("other-station", typeName="32ID", rootPath="2026-10")
    assert aps.list_experiments() == ["2026-09-C-3", "2026-10-B-2", "2026-08-A-1"]
    assert aps.get_experiment("2026-10-B-2").name == "2026-10-B-2"
    assert fake_dm.STATE.called("getExperimentsByStation")[0] == ((), {"stationName": "2BM"})  # as DMagic lists


def test_station_experiments_give_what_dm_keeps_of_each_without_asking_for_users(aps, fake_dm):
    aps.create_experiment(experiment())
    # as DMagic's create_experiment makes one: its own spelling of the PI's name, the title as description
    fake_dm.ExperimentDsApi().addExperiment("2026-10-Muller-ukasiewicz-1012039", typeName="2BM",
                                            description="Operando tomography", rootPath="2026-10",
                                            startDate="14-Oct-26", endDate="17-Oct-26")  # fmt: skip
    fake_dm.STATE.calls.clear()

    dmagic, ours = aps.station_experiments()

    assert (dmagic.name, dmagic.title, dmagic.gup, dmagic.year_month) == (
        "2026-10-Muller-ukasiewicz-1012039", "Operando tomography", "", "2026-10")  # fmt: skip
    assert dmagic.start == datetime(2026, 10, 14, tzinfo=CHICAGO)
    assert (ours.name, ours.gup, ours.esaf) == (NAME, "1234", "271828")
    assert [name for name, _, _ in fake_dm.STATE.calls] == ["getExperimentsByStation"]


def test_add_users_returns_new_ones_and_reports_unknown_users(aps, fake_dm):
    aps.create_experiment(experiment())
    fake_dm.STATE.users |= {"d1", "d2"}
    assert aps.add_users(NAME, [ExperimentUser("d1")]) == ["d1"]
    with pytest.raises(DMError, match=r"added d2; could not add d404 \(not a DM user\)"):
        aps.add_users(NAME, [ExperimentUser("d1"), ExperimentUser("d2"), ExperimentUser("d404")])
    assert fake_dm.STATE.experiments[NAME]["experimentUsernameList"] == ["d1", "d2"]
    assert ("d1", "User", NAME) in [args for args, _ in fake_dm.STATE.called("addUserExperimentRole")]
    assert aps.get_experiment(NAME).usernames == ("d1", "d2")


def test_add_users_adds_the_others_and_carries_them_in_the_error(aps, fake_dm):
    aps.create_experiment(experiment())
    fake_dm.STATE.users |= {"d1", "d2", "d3"}
    aps.add_users(NAME, [ExperimentUser("d1")])

    with pytest.raises(DMError, match=r"could not add d404 \(not a DM user\)") as failure:
        aps.add_users(NAME, [ExperimentUser(u) for u in ("d1", "d2", "d404", "d3")])

    assert failure.value.done == ["d2", "d3"]
    assert aps.get_experiment(NAME).usernames == ("d1", "d2", "d3")


def test_get_experiment_gives_the_users_contact_details(aps, fake_dm):
    aps.create_experiment(experiment())
    fake_dm.STATE.add_user("d1", firstName="Ann", lastName="Smith", email="ann@x.org", institution="Argonne")
    fake_dm.STATE.add_user("d2", firstName="Bo", lastName=None)  # no e-mail, no last name
    fake_dm.STATE.add_user("d3", firstName="Cy", lastName="Ng", email="cy@x.org")
    fake_dm.STATE.add_user("d4", email="di@x.org")
    aps.add_users(NAME, [ExperimentUser(u) for u in ("d1", "d2", "d3", "d4")])
    fake_dm.STATE.users.discard("d4")  # account gone since
    fake_dm.STATE.fail["getUserByUsername"] = fake_dm.DmException("user service busy")  # d1's lookup fails

    users = aps.get_experiment(NAME).users

    assert users == (
        ExperimentUser("d1", source="dm"),
        ExperimentUser("d2", "Bo", source="dm"),
        ExperimentUser("d3", "Cy Ng", "cy@x.org", source="dm"),
        ExperimentUser("d4", source="dm"),
    )
    assert aps.get_experiment(NAME).users[0] == ExperimentUser("d1", "Ann Smith", "ann@x.org", "Argonne", "dm")


def test_remove_users_returns_those_removed(aps, fake_dm):
    aps.create_experiment(experiment())
    fake_dm.STATE.users |= {"d1", "d2"}
    aps.add_users(NAME, [ExperimentUser("d1"), ExperimentUser("d2")])
    assert aps.remove_users(NAME, ["d2", "d9"]) == ["d2"]
    assert fake_dm.STATE.called("deleteUserExperimentRole") == [(("d2", "User", NAME), {})]


def test_users_of_unknown_experiment_are_refused(aps):
    with pytest.raises(InputError, match="no experiment named"):
        aps.add_users(NAME, [ExperimentUser("d1")])


def test_delete(aps, fake_dm, data_top_dir):
    aps.create_experiment(experiment())
    sentence = aps.delete_experiment(NAME)
    assert sentence == (
        f"deleted experiment {NAME} from the APS DM system (station 2BM, storage /gdata/dm/2026-10/{NAME}); "
        f"raw data in {data_top_dir / NAME} kept"
    )
    assert NAME not in fake_dm.STATE.experiments
    with pytest.raises(InputError, match="nothing deleted"):
        aps.delete_experiment(NAME)


@pytest.mark.parametrize("bad", ["../x", "a/b", ".."])
def test_escaping_names_are_refused_without_calling_dm(aps, fake_dm, bad):
    for call in (
        lambda: aps.create_experiment(experiment(name=bad)),
        lambda: aps.delete_experiment(bad),
        lambda: aps.get_experiment(bad),
    ):
        with pytest.raises(InputError):
            call()
    assert fake_dm.STATE.calls == []


def test_esaf_people_and_doi(aps, fake_dm):
    fake_dm.STATE.esafs[271828] = {
        "esafId": 271828,
        "esafTitle": "Fossil teeth",
        "experimentStartDate": "2026-10-14 08:00:00",
        "experimentEndDate": "2026-10-17 08:00:00",
        "doi": "10.11578/1234",
        "experimentUsers": [
            {"badgeNumber": "310011", "firstName": "Ann", "lastName": "Smith", "email": "ann@x.org",
             "institution": "Argonne", "piFlag": "Yes"},
            {"badge_number": 310012, "first_name": "Bo", "LastName": "Li", "Email": "bo@x.org",
             "affiliation": "UChicago", "piFlag": "No"},
            {"firstName": "No", "lastName": "Badge", "piFlag": "No"},
        ],
    }  # fmt: skip
    people, doi = aps.esaf("271828")
    assert doi == "10.11578/1234"
    assert people == [
        Person("310011", "Ann", "Smith", "ann@x.org", "Argonne", is_pi=True),
        Person("310012", "Bo", "Li", "bo@x.org", "UChicago", is_pi=False),
    ]
    assert fake_dm.STATE.called("getStationEsafById") == [(("2BM", 271828), {})]


def test_esaf_empty_and_failures(aps, fake_dm):
    assert aps.esaf("") == ([], "")
    with pytest.raises(DMError, match="APS DM: reading ESAF 999 failed: ESAF 999 not found"):
        aps.esaf("999")


def test_an_injected_api_module_is_used_without_import(fake_dm, data_top_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "dm", None)
    aps = ApsDM("2BM", data_top_dir, api=fake_dm)
    assert aps.create_experiment(experiment())[1] is True


# ---------------------------------------------------------------------- ApsDaq


@pytest.fixture
def found_record(tmp_path):
    return tmp_path / "state" / "dm-files.sqlite"


@pytest.fixture
def daq(fake_dm, data_top_dir, found_record):
    return ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record, direct_mount=False)


@pytest.fixture
def sources(data_top_dir):
    raw = data_top_dir / NAME
    rec = data_top_dir / f"{NAME}_rec"
    raw.mkdir()
    (raw / "scan_001.h5").write_bytes(b"x")
    return {str(raw): "data", str(rec): "analysis"}


def test_daq_start_checks_sources_and_starts_raw(daq, fake_dm, sources, data_top_dir):
    sentence = daq.start(experiment(), sources, once=False)
    raw = str(data_top_dir / NAME)
    assert fake_dm.STATE.called("startDaq") == [((NAME, f"@tomodata3:{raw}", {"processExistingFiles": True}), {})]
    assert sentence.startswith(f"DM DAQ started for {NAME}: {raw}")
    assert "_rec: it does not exist yet" in sentence


def test_daq_start_rec_goes_to_the_analysis_directory(daq, fake_dm, sources, data_top_dir):
    (data_top_dir / f"{NAME}_rec").mkdir()
    sentence = daq.start(experiment(), sources, once=False)
    calls = fake_dm.STATE.called("startDaq")
    assert calls[1][0][2] == {"processExistingFiles": True, "useAnalysisDirectoryAsRoot": True}
    assert "_rec is empty now; new files will be transferred" in sentence


def test_daq_start_refuses_a_missing_raw_folder_and_starts_nothing(daq, fake_dm, data_top_dir):
    sources = {str(data_top_dir / "2026-10-Typo-1234"): "data"}
    with pytest.raises(DMError, match="does not exist on tomodata3: check dm.data_top_dir .* nothing started"):
        daq.start(experiment(), sources, once=False)
    assert fake_dm.STATE.called("startDaq") == []


def test_daq_start_twice_reports_it_is_running(daq, fake_dm, sources):
    daq.start(experiment(), sources, once=False)
    sentence = daq.start(experiment(), sources, once=False)
    assert "already running" in sentence
    assert len(fake_dm.STATE.called("startDaq")) == 1


def test_daq_progress_stop_and_errors(daq, fake_dm, sources):
    assert daq.progress() == TransferProgress()
    daq.start(experiment(), sources, once=False)
    running = fake_dm.STATE.daqs[0]
    running.update(nFiles=10, nProcessedFiles=4, nCompletedFiles=4, lastFileProcessed="scan_004.h5")
    progress = daq.progress()
    assert (progress.state, progress.files_done, progress.files_total, progress.last_file) == (
        TransferState.RUNNING,
        4,
        10,
        "scan_004.h5",
    )
    assert progress.percent == 40.0
    running.update(nProcessingErrors=1, processingErrors={"scan_005.h5": "Permission denied"})
    progress = daq.progress()
    assert progress.state == TransferState.ERROR
    assert progress.message == "DM reports 1 transfer error: scan_005.h5: Permission denied"
    assert daq.stop().startswith(f"stopped DM transfer for {NAME}")
    assert fake_dm.STATE.called("stopDaq")[0][0][0] == NAME
    assert daq.stop() == "no DM transfer was running for this IOC"


def test_the_rate_is_kept_under_the_lock(fake_dm, data_top_dir, sources, found_record):
    """progress() runs in several threads: the rate bookkeeping is written only under the lock."""

    class CheckedDaq(ApsDaq):
        checking = False

        def __setattr__(self, name, value):
            if self.checking and name in ("_rate", "_last_bytes"):
                assert self._lock.locked(), f"{name} written without the lock"
            super().__setattr__(name, value)

    daq = CheckedDaq("2BM", data_top_dir, "tomodata3", found_record=found_record)
    daq.checking = True
    daq.start(experiment(), sources, once=False)
    fake_dm.STATE.daqs[0].update(nFiles=10, nCompletedFiles=1, totalProcessedBytes=1e6)
    daq.progress()
    fake_dm.STATE.daqs[0].update(nCompletedFiles=2, totalProcessedBytes=3e6)
    progress = daq.progress()

    assert progress.state == TransferState.RUNNING and progress.rate_mb_s > 0


def test_forget_calls_no_dm_service(daq, fake_dm, sources):
    daq.forget(sources)
    assert fake_dm.STATE.calls == []


def test_upload_once(daq, fake_dm, sources, data_top_dir):
    rec = data_top_dir / f"{NAME}_rec"
    rec.mkdir()
    (rec / "recon_0001.tiff").write_bytes(b"r")
    sentence = daq.start(experiment(), sources, once=True)
    assert sentence == f"upload started for {NAME}: {data_top_dir / NAME}, {rec}"
    calls = fake_dm.STATE.called("upload")
    assert calls[0][0][2] == {}
    assert calls[1][0][2] == {"useAnalysisDirectoryAsRoot": True}
    assert daq.progress().state == TransferState.RUNNING
    for upload in fake_dm.STATE.uploads.values():
        upload.update(status="done", nFiles=1, nProcessedFiles=1, nCompletedFiles=1)
    progress = daq.progress()
    assert (progress.state, progress.message) == (TransferState.STOPPED, "upload done: 2 of 2 files")


def test_upload_of_empty_folders_is_refused(daq, fake_dm, data_top_dir):
    raw = data_top_dir / NAME
    raw.mkdir()
    with pytest.raises(DMError, match=f"nothing to upload for {NAME}: skipped {raw}: it is empty"):
        daq.start(experiment(), {str(raw): "data"}, once=True)
    assert fake_dm.STATE.called("upload") == []


def test_resume_adopts_running_daqs_of_this_station(fake_dm, data_top_dir, sources, found_record):
    first = ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record)
    ApsDM("2BM", data_top_dir).create_experiment(experiment())
    first.start(experiment(), sources, once=False)
    fake_dm.ExperimentDaqApi().startDaq("other", "@host:/data/other", {})  # another station's DAQ
    restarted = ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record)
    assert restarted.resume() == f"DM DAQ still running for {NAME} (1 folder)"
    assert restarted.progress().state == TransferState.RUNNING
    assert restarted.stop().startswith("stopped DM transfer")
    assert ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record).resume() is None


def test_direct_mount_passes_bare_paths(fake_dm, data_top_dir, sources, found_record):
    daq = ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record, direct_mount=True)
    daq.start(experiment(), sources, once=False)
    assert fake_dm.STATE.called("startDaq")[0][0][1] == str(data_top_dir / NAME)


def test_daq_sdk_failure_is_a_dm_error(daq, fake_dm, sources):
    fake_dm.STATE.fail["startDaq"] = fake_dm.DmException("DAQ service unavailable")
    with pytest.raises(DMError, match="APS DM: starting the DAQ of .* failed: DAQ service unavailable"):
        daq.start(experiment(), sources, once=False)


# ---------------------------------------------------------------------- the files sent: the DM file catalogue

STORAGE = f"/gdata/dm/2026-10/{NAME}"


def test_sent_since_lists_the_catalogued_files_found_after_the_mark(daq, fake_dm, sources):
    daq.start(experiment(storage_directory=STORAGE), sources, once=False)
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 2048, 1_000.0, md5="9e107d9d372bb6826bd81d3542a419d6")
    fake_dm.STATE.add_file(NAME, "/analysis/rec_0001.tiff", 512, 1_002.5)
    fake_dm.STATE.add_file("other", "scan_001.h5", 1, 2_000.0)  # another experiment's

    sent = daq.sent_since(0.0, STORAGE)

    found_at = sent[0].sent_at  # when this IOC first found them catalogued, not their mtime
    assert found_at > 2_000.0
    assert sent == [
        SentFile(f"{STORAGE}/scan_001.h5", 2048, 1_000.0, found_at, "md5:9e107d9d372bb6826bd81d3542a419d6"),
        SentFile(f"{STORAGE}/analysis/rec_0001.tiff", 512, 1_002.5, found_at),
    ]
    assert daq.sent_since(found_at, STORAGE + "/") == []
    # read as the DM station GUI reads the catalogue: (experimentName, queryDict, skip, limit)
    assert fake_dm.STATE.called("getExperimentFiles")[0] == ((NAME, {}, 0, 1000), {"rawData": False})


def dataset(daq, mark: float) -> tuple[list[str], float]:
    """As the catalogue use case makes a dataset: the names of the files sent since `mark`, the next mark."""
    files = daq.sent_since(mark, STORAGE)
    return sorted(PurePosixPath(f.path).name for f in files), max([mark] + [f.sent_at for f in files])


def test_a_file_still_processed_at_daqstop_is_in_the_next_dataset_though_older(daq, fake_dm):
    """A (mtime 10:00) is still processed at DaqStop while B (10:01) is catalogued: A is in the next dataset."""
    fake_dm.STATE.add_file(NAME, "B.h5", 1, 36_060.0)
    names, mark = dataset(daq, 0.0)
    assert names == ["B.h5"]

    fake_dm.STATE.add_file(NAME, "A.h5", 1, 36_000.0)
    fake_dm.STATE.add_file(NAME, "copied_with_cp_p.h5", 1, 1_000.0)  # an old mtime (cp -p, existing files)
    names, mark = dataset(daq, mark)
    assert names == ["A.h5", "copied_with_cp_p.h5"]
    assert dataset(daq, mark) == ([], mark)


def test_a_dataset_not_written_is_listed_again_and_a_restart_keeps_what_was_found(
    daq, fake_dm, data_top_dir, found_record
):
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 1, 1_000.0)
    names, mark = dataset(daq, 0.0)
    assert dataset(daq, 0.0) == (names, mark)  # its record was not written: the mark stayed

    restarted = ApsDaq("2BM", data_top_dir, "tomodata3", found_record=found_record)
    fake_dm.STATE.add_file(NAME, "scan_002.h5", 1, 500.0)
    assert dataset(restarted, mark)[0] == ["scan_002.h5"]
    assert stat.S_IMODE(found_record.stat().st_mode) == 0o600


def test_forget_after_delete_makes_a_recreated_experiments_files_new(daq, fake_dm, sources):
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 1, 1_000.0)
    _, mark = dataset(daq, 0.0)
    assert dataset(daq, mark)[0] == []

    daq.forget({source: f"{STORAGE}/{sub}" for source, sub in sources.items()})  # as Delete calls it

    _, first = dataset(daq, 0.0)  # the re-created experiment's first dataset
    assert first > mark
    fake_dm.STATE.add_file(NAME, "scan_002.h5", 1, 1_000.0)
    assert dataset(daq, first)[0] == ["scan_002.h5"]


def test_datasets_an_earlier_version_made_by_mtime_are_not_made_again(daq, fake_dm, caplog):
    fake_dm.STATE.add_file(NAME, "in_a_dataset.h5", 1, 1_000.0)
    fake_dm.STATE.add_file(NAME, "after_it.h5", 1, 3_000.0)
    caplog.set_level(logging.INFO)

    names, mark = dataset(daq, 2_000.0)  # the mark an earlier version wrote: the newest mtime it listed

    assert names == ["after_it.h5"]
    assert "1 file(s) of /gdata/dm/2026-10/2026-10-Smith-1234 modified before the last dataset" in caplog.text
    fake_dm.STATE.add_file(NAME, "late.h5", 1, 1_500.0)
    assert dataset(daq, mark)[0] == ["late.h5"]


def test_an_unreadable_found_record_is_kept_aside_said_once_then_started_afresh(daq, fake_dm, found_record):
    found_record.parent.mkdir(parents=True)
    found_record.write_bytes(b"not a database at all" * 100)
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 1, 1_000.0)

    with pytest.raises(DMError, match="DM file record .* could not be read .*: kept as dm-files.sqlite.corrupt-"):
        daq.sent_since(0.0, STORAGE)

    assert dataset(daq, 0.0)[0] == ["scan_001.h5"]
    kept = [p for p in found_record.parent.iterdir() if ".corrupt-" in p.name]
    assert [p.read_bytes() for p in kept] == [b"not a database at all" * 100]


def test_sent_since_reads_every_page_even_when_the_catalogue_answers_fewer_than_asked(daq, fake_dm):
    fake_dm.STATE.max_files_per_call = 3
    for n in range(8):
        fake_dm.STATE.add_file(NAME, f"scan_{n:03d}.h5", n, 1_000.0 + n)

    sent = daq.sent_since(0.0, STORAGE)  # an experiment this IOC did not start: named by its storage

    assert [f.size for f in sent] == list(range(8))
    assert [args[2] for args, _ in fake_dm.STATE.called("getExperimentFiles")] == [0, 3, 6, 8]


def test_sent_since_of_an_empty_catalogue_is_one_call_and_no_file(daq, fake_dm):
    assert daq.sent_since(0.0, STORAGE) == []
    assert len(fake_dm.STATE.called("getExperimentFiles")) == 1


def test_sent_since_ends_when_the_catalogue_repeats_a_page(daq, fake_dm, monkeypatch):
    """A catalogue that ignores `skip` would answer the first page for ever: the list ends instead."""
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 1, 1_000.0)
    monkeypatch.setattr(fake_dm.FileCatApi, "getExperimentFiles", lambda self, *args: list(fake_dm.STATE.files[NAME]))
    assert [f.size for f in daq.sent_since(0.0, STORAGE)] == [1]


def test_sent_since_leaves_out_records_without_a_safe_path_or_a_time(daq, fake_dm, caplog):
    fake_dm.STATE.add_file(NAME, "../escape.h5", 1, 1_000.0)
    fake_dm.STATE.add_file(NAME, "scan_001.h5", 1, 1_000.0)
    fake_dm.STATE.files[NAME][1]["fileModificationTimestamp"] = "someday"
    fake_dm.STATE.add_file(NAME, "scan_002.h5", 1, 1_000.0)
    fake_dm.STATE.files[NAME][2]["fileModificationTimestamp"] = "2026/10/15 10:00:00"  # as DM writes times

    sent = daq.sent_since(0.0, STORAGE)

    assert [f.path for f in sent] == [f"{STORAGE}/scan_002.h5"]
    assert sent[0].mtime == datetime(2026, 10, 15, 10).timestamp()  # local time
    assert "2 record(s) without a path or a time left out" in caplog.text


def test_sent_since_with_the_catalogue_down_is_a_dm_error(daq, fake_dm):
    fake_dm.STATE.fail["getExperimentFiles"] = ConnectionError("connection refused")
    with pytest.raises(DMError, match=f"APS DM: reading the file catalogue of {NAME} failed: connection refused"):
        daq.sent_since(0.0, STORAGE)
