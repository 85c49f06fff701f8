"""The catalogue through the installed IOC: metadata snapshots from a second IOC (EPICS base) and the
acquisition's record next to its data, and the SciCat dataset it becomes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid

import pytest
import yaml

from ..helpers import TEST_DATA, wait_for
from ..scicat_standin import ScicatStandIn, dataset_problems, origdatablock_problems
from .epics_base import SoftIOC
from .fixtures import IN_SECOND
from .harness import DMAGIC_IOC, IOC

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
                        "access_groups": ["2bm-staff", "ingestor"], "creation_location": "APS/2-BM-A,B",
                        "contact_email": "2bm-staff@aps.anl.gov", "source_folder_host": "data.aps.anl.gov"}  # fmt: skip
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
        assert held["ownerGroup"] == "p1013377" and held["accessGroups"] == ["2bm-staff", "ingestor"]
        assert held["principalInvestigator"] == "Jean-Luc D'Arcy" and held["contactEmail"] == "jl.darcy@example.fr"
        assert held["ownerEmail"] == "jl.darcy@example.fr" and held["sourceFolderHost"] == "data.aps.anl.gov"
        assert held["proposalId"] == "1013377" and held["creationLocation"] == "APS/2-BM-A,B"
        assert held["numberOfFiles"] == 3 and held["size"] == 3003  # SciCat's count of its origdatablock, once
        assert held["runNumber"] == "1" and "T" in held["creationTime"] and "T" in held["endTime"]
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


def test_a_dataset_stuck_behind_a_slow_or_lying_scicat_is_major_and_named_until_it_is_sent(config, tmp_path, standin):
    config = with_scicat(config, tmp_path, standin)
    config["scicat"]["stuck_after"] = 1
    standin.slow = threading.Event()  # SciCat answers, but only once told to
    try:
        with IOC(config, tmp_path) as ioc:
            status, severity = acquire(ioc, tmp_path)
            assert severity == 0 and "queued for SciCat as " in status, status
            pid = status.split("queued for SciCat as ")[1].split(";")[0]
            wait_for(lambda: ioc.get("Catalog:Health") == "Error", timeout=15, what="Catalog:Health Error")
            assert ioc.severity("Catalog:Health") == MAJOR and ioc.get("Catalog:Pending") == 1
            stuck = f"catalogue: dataset {pid} waiting for SciCat for more than 1 s (since "
            said = wait_for(lambda: (text := ioc.get("Status")).startswith(stuck) and text, what="Status naming it")
            assert said.endswith("scicat.stuck_after): SciCat has not answered yet") and ioc.severity("Status") == MAJOR

            standin.answer_all = (200, {"status": "ok"})  # then a SciCat saying "ok" to anything: not "there"
            standin.slow.set()
            lie = f'SciCat answered GET datasets/{{pid}} with HTTP 200 but not dataset {pid}: {{"status": "ok"}}'
            wait_for(lambda: ioc.get("Status").endswith(lie), timeout=15, what="Status naming the answer refused")
            assert ioc.get("Catalog:Health") == "Error" and ioc.get("Catalog:Pending") == 1 and not standin.datasets

            standin.answer_all = None
            wait_for(lambda: ioc.get("Catalog:Pending") == 0, timeout=30, what="the dataset sent")
            wait_for(lambda: ioc.get("Catalog:Health") == "OK", what="Catalog:Health OK")
            assert list(standin.datasets) == [pid] and ioc.get("Catalog:LastDataset") == pid
    finally:
        standin.slow.set()


def test_a_daq_stop_with_no_new_file_is_a_dataset_complete_without_origdatablock(config, tmp_path, standin):
    with IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        status, severity = acquire(ioc, tmp_path, files=0)
        assert severity == 0 and "0 files, 0 bytes; queued for SciCat as " in status, status
        wait_for(lambda: ioc.get("Catalog:Pending") == 0 and ioc.get("Catalog:LastDataset"), what="the dataset sent")
        (pid,) = standin.datasets
        assert standin.datasets[pid]["numberOfFiles"] == 0 and pid not in standin.datablocks
        assert ioc.get("Catalog:Health") == "OK"


def test_an_account_without_the_right_to_choose_pids_is_named_on_status_and_health(config, tmp_path):
    with ScicatStandIn(privileged_groups=()) as standin, IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        assert ioc.command("Create")[1] == 0
        (tmp_path / "data" / NAME).mkdir(parents=True, exist_ok=True)
        ioc.command("DaqStart")
        (tmp_path / "data" / NAME / "proj_0.h5").write_bytes(b"x" * 1000)
        wait_for(lambda: ioc.get("Daq:FilesDone") == 1, timeout=15, what="the file sent")
        status, severity = ioc.command("Catalog")  # not DaqStop: no news of the transfer's end to follow on Status
        assert severity == 0 and "queued for SciCat as " in status, status
        pid = status.split("queued for SciCat as ")[1].split(";")[0]
        lacks = (f"catalogue: the SciCat account ingestor may not create dataset {pid} under the IOC's pid: it must be "
                 "in SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS)")  # fmt: skip
        said = wait_for(lambda: (text := ioc.get("Status")).startswith(lacks) and text, timeout=20,
                        what="Status naming the lack")  # fmt: skip
        assert said.endswith("(SciCat answered POST datasets with HTTP 403: Unauthorized to create this dataset)")
        wait_for(lambda: ioc.get("Catalog:Health") == "Error", what="Catalog:Health Error")
        assert ioc.severity("Status") == MAJOR
        assert ioc.severity("Catalog:Health") == MAJOR and ioc.get("Catalog:Pending") == 1 and not standin.datasets
        standin.privileged_groups = {"ingestor"}  # SciCat's admin gives the right: sent, once
        wait_for(lambda: ioc.get("Catalog:Pending") == 0, timeout=30, what="the dataset sent")
        assert list(standin.datasets) == [pid] and len(standin.datablocks[pid]) == 1


def check(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return subprocess.run([DMAGIC_IOC, "--config", str(path), "--check"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))  # fmt: skip


def test_check_logs_in_and_says_what_the_scicat_account_lacks(config, tmp_path):
    with ScicatStandIn(privileged_groups=(), groups=("ingestor", "p1")) as standin:
        config = with_scicat(config, tmp_path, standin)
        config["scicat"]["access_groups"] = ["2bm-staff"]
        result = check(config, tmp_path)
        assert result.returncode == 2, result.stderr
        found = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
        assert found == [
            "scicat.credentials: the SciCat account ingestor may not create datasets under the IOC's pids: it must be "
            "in SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS) (its groups: ingestor, p1)",
            "scicat.access_groups: the SciCat account ingestor is in none of them (its groups: ingestor, p1): it could "
            "not read back the datasets it creates; add one of its groups",
        ]
        assert standin.password not in result.stderr + result.stdout and not standin.datasets
        standin.privileged_groups = {"ingestor"}
        config["scicat"]["access_groups"] = ["2bm-staff", "ingestor"]
        result = check(config, tmp_path)
        assert result.returncode == 0 and "is valid" in result.stdout, result.stderr


def test_every_body_the_ioc_posts_passes_scicats_validators_as_they_are(config, tmp_path, standin):
    with IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        acquire(ioc, tmp_path, files=2)
        wait_for(lambda: ioc.get("Catalog:Pending") == 0 and ioc.get("Catalog:LastDataset"), what="the dataset sent")
    ((dataset_route, dataset), (block_route, block)) = standin.posted
    print("POST", dataset_route, json.dumps(dataset, indent=1, ensure_ascii=False))  # shown with -s
    print("POST", block_route, json.dumps(block, indent=1, ensure_ascii=False))
    assert dataset_route == "/api/v3/datasets" and dataset_problems(dataset) == []
    assert not {"size", "numberOfFiles"} & set(dataset) and dataset["contactEmail"] == "jl.darcy@example.fr"
    assert block_route == f"/api/v3/datasets/{dataset['pid']}/origdatablocks" and origdatablock_problems(block) == []
    assert set(block) == {"size", "dataFileList"} and block["size"] == 2001
