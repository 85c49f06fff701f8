"""The ophyd-async device, path provider, run metadata and plan stubs against the installed IOC.

Through the real Channel Access backend of ophyd-async (aioca on epicscorelibs' libca), a RunEngine
and ophyd-async's simulated detector, which writes its HDF5 files where the path provider says.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial

import pytest

pytest.importorskip("ophyd_async.epics.core", reason="the bluesky extra is not installed: pip install '.[bluesky]'")
pytest.importorskip("ophyd_async.sim", reason="ophyd-async's simulated detectors need h5py (the bluesky extra)")

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from dmagic_ioc.bluesky import (
    CommandFailed,
    DataManagement,
    ExperimentPathProvider,
    TransferFailed,
    run_metadata,
    with_run_metadata,
)
from dmagic_ioc.bluesky import plans as dm_plans
from ophyd_async.core import init_devices
from ophyd_async.sim import SimBlobDetector

from ..e2e.fixtures import BETWEEN
from ..helpers import wait_for
from .conftest import (
    MANUAL,
    MANUAL_ARGUMENTS,
    MANUAL_EXPERIMENT,
    PROPOSAL_EXPERIMENT,
    create_manual,
    look_at_second_beamtime,
)

pytestmark = [
    pytest.mark.e2e,
    # The harness loads pyepics before the RunEngine imports ophyd, which would have pointed it at epicscorelibs.
    pytest.mark.filterwarnings("ignore:epicscorelibs.path.pyepics must be imported before epics.ca"),
]

MAJOR = 2


def connect(prefix: str) -> tuple[DataManagement, SimBlobDetector]:
    """The device and a simulated detector writing into the selected experiment (RE's loop must run)."""
    with init_devices():
        dm = DataManagement(prefix)
        det = SimBlobDetector(ExperimentPathProvider(dm))
    return dm, det


def test_every_run_carries_the_proposal_and_experiment(ioc, RE, tmp_path):
    create_manual(ioc)
    dm, det = connect(ioc.prefix)
    RE.preprocessors.append(partial(with_run_metadata, dm=dm))
    documents: list[tuple[str, dict]] = []
    RE(bp.count([det, dm], num=2), lambda name, doc: documents.append((name, doc)))

    start = documents[0][1]
    storage = ioc.get("StorageDirectory")
    expected = {
        "proposal_id": "77",
        "proposal_title": MANUAL["Manual:Title"],
        "pi_name": "Zoë Müller-Łukasiewicz",
        "experiment_name": MANUAL_EXPERIMENT,
        "data_directory": str(tmp_path / "data" / MANUAL_EXPERIMENT),
        "storage_directory": storage,
        "beamline_id": "2-BM-A,B",
    }
    assert {key: start[key] for key in expected} == expected
    assert run_metadata(dm) == {key: start[key] for key in run_metadata(dm)}
    assert "esaf_id" in start and "pi_email" in start and "pi_badge" in start

    # The proposal once per run, in the descriptor; status and transfer at every event.
    descriptor = next(doc for name, doc in documents if name == "descriptor")
    configuration = descriptor["configuration"]["dm"]["data"]
    assert configuration["dm-user_last_name"] == "Müller-Łukasiewicz"
    assert configuration["dm-user_institution"] == "Universität Beispielstadt"
    assert configuration["dm-storage_directory"] == storage
    events = [doc for name, doc in documents if name == "event"]
    assert len(events) == 2
    assert events[0]["data"]["dm-status"] == ioc.get("Status")
    assert events[0]["data"]["dm-daq_state"] == "Stopped" and events[0]["data"]["dm-dm_health"] == "OK"
    # The detector wrote into the experiment's DataDirectory.
    assert list((tmp_path / "data" / MANUAL_EXPERIMENT).glob("*.h5"))


def test_a_failed_command_raises_with_the_status_text(ioc, RE):
    dm, _ = connect(ioc.prefix)
    with pytest.raises(CommandFailed) as failure:
        RE(dm_plans.select(dm, "2026-11-Nobody-1"))
    assert failure.value.status == ioc.get("Status") == ioc.get("LastError")
    assert "no experiment named 2026-11-Nobody-1" in failure.value.status
    assert ioc.severity("Status") == MAJOR
    assert failure.value.command == f"{ioc.prefix}Select"

    # A plan may catch it and go on; Create without a beamtime now is refused the same way.
    ioc.put("TimeOffsetDays", BETWEEN)
    ioc.command("Refresh")
    caught: list[CommandFailed] = []

    def create_or_go_on():
        try:
            yield from dm_plans.create(dm)
        except CommandFailed as error:
            caught.append(error)
        yield from bps.null()

    RE(create_or_go_on())
    assert len(caught) == 1 and "no beamtime is scheduled now" in caught[0].status


def test_upload_and_wait_returns_with_the_files_in_storage(ioc, RE, tmp_path):
    look_at_second_beamtime(ioc)
    dm, _ = connect(ioc.prefix)
    RE(dm_plans.create(dm))
    raw = tmp_path / "data" / PROPOSAL_EXPERIMENT
    (raw / "scan1").mkdir()
    (raw / "scan1" / "proj_000.h5").write_bytes(os.urandom(50_000))  # new: settles in 0.3 s (settle_time)
    summaries: list[str] = []

    def upload():
        summaries.append((yield from dm_plans.upload_and_wait(dm, timeout=20)))

    started = time.monotonic()
    RE(upload())
    print(f"upload_and_wait of one new file: {time.monotonic() - started:.2f} s")
    stored = tmp_path / "storage" / "2026-11" / PROPOSAL_EXPERIMENT / "data" / "scan1" / "proj_000.h5"
    assert stored.read_bytes() == (raw / "scan1" / "proj_000.h5").read_bytes()
    assert ioc.get("DaqState") == "Stopped"
    assert "finished" in summaries[0] and PROPOSAL_EXPERIMENT in summaries[0]


def test_upload_and_wait_raises_when_the_transfer_ends_in_error(ioc, RE, tmp_path):
    look_at_second_beamtime(ioc)
    dm, _ = connect(ioc.prefix)
    RE(dm_plans.create(dm))
    storage = tmp_path / "storage" / "2026-11" / PROPOSAL_EXPERIMENT / "data"
    (storage / "blocked").write_text("a file where a folder must go")
    (tmp_path / "data" / PROPOSAL_EXPERIMENT / "blocked").mkdir()
    (tmp_path / "data" / PROPOSAL_EXPERIMENT / "blocked" / "x.dat").write_bytes(b"1")
    with pytest.raises(TransferFailed, match="blocked"):
        RE(dm_plans.upload_and_wait(dm, timeout=20))
    assert ioc.get("DaqState") == "Error"


def test_the_path_provider_follows_a_select(ioc, RE, tmp_path):
    look_at_second_beamtime(ioc)
    dm, det = connect(ioc.prefix)
    provider = ExperimentPathProvider(dm)
    with pytest.raises(RuntimeError, match="no experiment is selected"):
        provider()
    RE(dm_plans.create(dm))
    assert str(provider().directory_path) == str(tmp_path / "data" / PROPOSAL_EXPERIMENT)
    create_manual(ioc)  # selects the manual experiment
    assert str(provider().directory_path) == str(tmp_path / "data" / MANUAL_EXPERIMENT)

    def select_and_count():
        yield from dm_plans.select(dm, PROPOSAL_EXPERIMENT)
        yield from bp.count([det])  # prepared right after the Select: files go to the newly selected experiment

    RE(select_and_count())
    assert str(provider().directory_path) == str(tmp_path / "data" / PROPOSAL_EXPERIMENT)
    assert list((tmp_path / "data" / PROPOSAL_EXPERIMENT).glob("*.h5"))
    assert not list((tmp_path / "data" / MANUAL_EXPERIMENT).glob("*.h5"))


def test_plans_make_a_manual_experiment_catalogue_its_files_and_delete_it_only_by_its_name(ioc, RE, tmp_path):
    dm, _ = connect(ioc.prefix)
    RE(dm_plans.create_manual(dm, **MANUAL_ARGUMENTS))
    assert ioc.get("ExperimentName") == MANUAL_EXPERIMENT and ioc.get("Manual:Badges") == ""
    assert {name: ioc.get(name) for name in MANUAL} == MANUAL  # non-ASCII written as UTF-8 through aioca

    RE(dm_plans.daq_start(dm))
    raw = tmp_path / "data" / MANUAL_EXPERIMENT
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "proj_0.h5").write_bytes(os.urandom(2000))
    wait_for(lambda: ioc.get("Daq:FilesDone") == 1, timeout=15, what="the file sent")
    read: dict[str, object] = {}

    def catalog_then_read():
        yield from dm_plans.catalog(dm)
        for name in ("status", "metadata_last", "catalog_pending", "catalog_health"):
            read[name] = yield from bps.rd(getattr(dm, name))
        yield from dm_plans.daq_stop(dm)

    RE(catalog_then_read())
    assert f"dataset {MANUAL_EXPERIMENT}-1.json: 1 file, 2000 bytes" in str(read["status"]), read["status"]
    storage = tmp_path / "storage" / "2026-11" / MANUAL_EXPERIMENT
    assert (storage / "metadata" / f"{MANUAL_EXPERIMENT}-1.json").is_file()
    assert read["metadata_last"] == ioc.get("Metadata:Last")
    assert {"start", "end"} <= set(json.loads(str(read["metadata_last"])))  # the acquisition's two snapshots
    assert read["catalog_pending"] == 0 and read["catalog_health"] == "Disabled"  # scicat.enabled: false

    with pytest.raises(CommandFailed, match="DeleteConfirm must equal ExperimentName"):
        RE(dm_plans.delete(dm))  # DeleteConfirm is empty: the plan never fills it in from ExperimentName
    assert ioc.get("ExperimentName") == MANUAL_EXPERIMENT
    RE(dm_plans.delete(dm, MANUAL_EXPERIMENT))
    assert ioc.get("ExperimentName") == "" and ioc.get("DeleteConfirm") == "" and ioc.severity("Status") == 0
    assert MANUAL_EXPERIMENT not in ioc.get("Experiments").split("\n")
