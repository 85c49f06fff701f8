"""The catalogue through the installed IOC: metadata snapshots from a second IOC (EPICS base) and the
acquisition's record next to its data (SPEC section 10)."""

from __future__ import annotations

import json
import uuid

import pytest

from ..helpers import TEST_DATA, wait_for
from ..scicat_standin import ScicatStandIn
from .epics_base import SoftIOC
from .fixtures import IN_SECOND
from .harness import IOC

pytestmark = pytest.mark.e2e

NAME = "2026-11-DArcy-1013377"
MAJOR = 2


@pytest.fixture
def standin():
    with ScicatStandIn() as running:
        yield running


def with_scicat(config: dict, tmp_path, standin: ScicatStandIn) -> dict:
    credentials = tmp_path / "scicat.cred"
    credentials.write_text(f"{standin.username}|{standin.password}\n")
    credentials.chmod(0o600)
    config["scicat"] = {"enabled": True, "url": standin.url, "credentials": str(credentials), "owner_group": "p{gup}",
                        "access_groups": ["2bm-staff"], "creation_location": "APS/2-BM-A,B"}  # fmt: skip
    return config


def acquire(ioc: IOC, tmp_path, files: int = 3) -> tuple[str, int]:
    """Create the experiment of the second beamtime, DaqStart, write `files` files, DaqStop: DaqStop's Status."""
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    assert ioc.command("Create")[1] == 0
    raw = tmp_path / "data" / NAME
    raw.mkdir(parents=True, exist_ok=True)
    ioc.command("DaqStart")
    for i in range(files):
        (raw / f"proj_{i}.h5").write_bytes(b"x" * (1000 + i))
    wait_for(lambda: ioc.get("Daq:FilesDone") == files, timeout=15, what=f"{files} files")
    return ioc.command("DaqStop")


@pytest.fixture
def beamline_prefix(tmp_path):
    prefix = f"bl{uuid.uuid4().hex[:8]}:"
    with SoftIOC([TEST_DATA / "beamline_metadata.db"], {"P": prefix}, ready_pv=f"{prefix}Energy",
                 log_path=tmp_path / "beamline.log"):  # fmt: skip
        yield prefix


def test_daq_start_files_daq_stop_write_the_record_with_both_snapshots(config, tmp_path, beamline_prefix):
    p = beamline_prefix
    config["metadata"] = {"pvs": {"energy": f"{p}Energy", "sample_x": f"{p}SampleX", "gone": f"{p}Absent"}}
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("Catalog:Health") == "Disabled"  # scicat.enabled: false
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        assert ioc.command("Create")[1] == 0
        raw, storage = tmp_path / "data" / NAME, tmp_path / "storage" / "2026-11" / NAME
        raw.mkdir(parents=True, exist_ok=True)
        status, severity = ioc.command("DaqStart")
        assert severity == 1 and f"{p}Absent" in status, status  # MINOR: a PV that does not answer
        for i in range(3):
            (raw / f"proj_{i}.h5").write_bytes(b"x" * (1000 + i))
        wait_for(lambda: ioc.get("Daq:FilesDone") == 3, timeout=15, what="3 files")
        status, severity = ioc.command("DaqStop")
        assert f"dataset {NAME}-1.json: 3 files, 3003 bytes" in status and severity == 1, status

        record = json.loads((storage / "metadata" / f"{NAME}-1.json").read_text(encoding="utf-8"))
        assert record["proposal"]["gup"] == "1013377" and record["proposal"]["pi"]["name"] == "Jean-Luc D'Arcy"
        assert sorted(f["path"] for f in record["files"]) == [f"data/proj_{i}.h5" for i in range(3)]
        assert record["number_of_files"] == 3 and record["size"] == 3003
        for moment in ("start", "end"):
            pvs = record["snapshots"][moment]["pvs"]
            assert pvs["energy"]["value"] == 25.5 and pvs["energy"]["units"] == "keV"
            assert pvs["sample_x"]["severity"] == "MAJOR"
            assert pvs["gone"] == {"pv": f"{p}Absent", "missing": True, "why": "no answer within 2 s"}
        assert json.loads(ioc.get("Metadata:Last")) == record["snapshots"]

        status, severity = ioc.command("Catalog")  # nothing new since
        assert severity == 0 and "no dataset made" in status


def test_each_acquisition_becomes_one_scicat_dataset_under_the_proposals_group(
    config, tmp_path, beamline_prefix, standin
):
    p = beamline_prefix
    config["metadata"] = {"pvs": {"energy": f"{p}Energy", "sample_x": f"{p}SampleX"}}
    with IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        status, severity = acquire(ioc, tmp_path)
        assert severity == 0 and "queued for SciCat" in status, status
        wait_for(lambda: ioc.get("Catalog:Pending") == 0 and ioc.get("Catalog:LastDataset"), what="the dataset sent")
        (pid,) = standin.datasets
        assert ioc.get("Catalog:LastDataset") == pid and ioc.get("Catalog:Health") == "OK"
        held = standin.datasets[pid]
        assert held["ownerGroup"] == "p1013377" and held["accessGroups"] == ["2bm-staff"]
        assert held["principalInvestigator"] == "Jean-Luc D'Arcy" and held["contactEmail"] == "jl.darcy@example.fr"
        assert held["proposalId"] == "1013377" and held["creationLocation"] == "APS/2-BM-A,B"
        assert held["numberOfFiles"] == 3 and held["size"] == 3003
        assert held["sourceFolder"] == str(tmp_path / "storage" / "2026-11" / NAME)
        snapshots = held["scientificMetadata"]["snapshots"]
        assert snapshots["start"]["pvs"]["energy"]["units"] == "keV"
        assert snapshots["end"]["pvs"]["sample_x"]["severity"] == "MAJOR"
        assert len(standin.datablocks[pid][0]["dataFileList"]) == 3
        record = json.loads((tmp_path / "storage" / "2026-11" / NAME / "metadata" / f"{NAME}-1.json").read_text())
        assert record["pid"] == pid


def test_scicat_down_at_daq_stop_waits_in_the_queue_and_is_sent_once_when_back(config, tmp_path, standin):
    with IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        standin.stop()
        status, severity = acquire(ioc, tmp_path)
        assert severity == 0, status  # the data moved; the catalogue waits
        wait_for(lambda: ioc.get("Catalog:Health") == "Error", timeout=15, what="Catalog:Health Error")
        assert ioc.severity("Catalog:Health") == MAJOR and ioc.get("Catalog:Pending") == 1
        assert ioc.get("Email:Health") != "Error" and ioc.get("DM:Health") == "OK"
        standin.start()
        wait_for(lambda: ioc.get("Catalog:Pending") == 0, timeout=30, what="the dataset sent when SciCat is back")
        wait_for(lambda: ioc.get("Catalog:Health") == "OK", what="Catalog:Health OK")
        assert len(standin.datasets) == 1 and sum(len(b) for b in standin.datablocks.values()) == 1


def test_a_dataset_pending_at_a_kill_9_is_sent_once_after_the_restart(config, tmp_path, standin):
    config = with_scicat(config, tmp_path, standin)
    with IOC(config, tmp_path) as ioc:
        standin.stop()
        acquire(ioc, tmp_path)
        wait_for(lambda: ioc.get("Catalog:Pending") == 1, what="the dataset queued")
        ioc.kill()
    standin.start()
    with IOC(config, tmp_path) as ioc:
        wait_for(lambda: ioc.get("Catalog:Pending") == 0, timeout=30, what="the queued dataset sent after restart")
        assert len(standin.datasets) == 1 and sum(len(b) for b in standin.datablocks.values()) == 1
        assert ioc.get("Catalog:LastDataset") == next(iter(standin.datasets))
