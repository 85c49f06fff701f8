"""The SciCat adapter against the local stand-in (tests/scicat_standin.py): the payload, the queue, never twice."""

from __future__ import annotations

import pytest
import requests
from dmagic_ioc.adapters.scicat import CatalogQueue, ScicatCatalogue, ScicatClient
from dmagic_ioc.ioc.domain.model import CatalogError
from dmagic_ioc.ioc.domain.ports import CatalogFile, Dataset

from ..helpers import wait_for
from ..scicat_standin import ScicatStandIn


def dataset(pid: str = "20.500.12269/abc-1", files: int = 3) -> Dataset:
    return Dataset(
        pid=pid, name="2026-11-DArcy-1013377-1", description="Fast 4D imaging of foam coarsening",
        owner="Jean-Luc D'Arcy", contact_email="jl.darcy@example.fr", principal_investigator="Jean-Luc D'Arcy",
        owner_group="1013377", access_groups=("2bm-staff",), proposal_id="1013377",
        source_folder="/gdata/dm/2BM/2026-11/2026-11-DArcy-1013377", creation_location="APS/2-BM-A,B",
        creation_time="2026-11-20T12:00:00-06:00", end_time="2026-11-20T12:30:00-06:00",
        files=tuple(CatalogFile(f"data/p{i}.h5", 1000 + i, "2026-11-20T18:10:00+00:00") for i in range(files)),
        scientific_metadata={"snapshots": {"start": {"pvs": {"energy": {"value": 25.5, "units": "keV"}}}}},
    )  # fmt: skip


@pytest.fixture
def standin():
    with ScicatStandIn() as running:
        yield running


@pytest.fixture
def credentials(tmp_path, standin):
    path = tmp_path / "scicat.cred"
    path.write_text(f"{standin.username}|{standin.password}\n")
    path.chmod(0o600)
    return path


def catalogue(tmp_path, standin, credentials) -> ScicatCatalogue:
    return ScicatCatalogue(ScicatClient(standin.url, credentials, timeout=2), tmp_path / "catalog.sqlite", "tomo1")


def test_the_standin_validates_as_scicat_does(standin):
    api = standin.url + "/"
    assert requests.post(api + "Datasets", json={"type": "raw"}, timeout=5).status_code == 401
    bad = requests.post(api + "Datasets", json={}, headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert bad.status_code == 401
    token = requests.post(api + "auth/login", json={"username": standin.username, "password": standin.password},
                          timeout=5).json()["access_token"]  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    missing = requests.post(api + "Datasets", json={"type": "raw", "owner": "x"}, headers=headers, timeout=5)
    assert missing.status_code == 400 and "contactEmail should not be empty" in missing.json()["message"]
    orphan = requests.post(api + "Datasets/nope/origdatablocks", json={}, headers=headers, timeout=5)
    assert orphan.status_code == 404


def test_a_dataset_is_created_with_every_field_and_one_origdatablock_listing_every_file(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.queue.put("20.500.12269/abc-1", *_payload(sender, dataset()))
    assert sender.send_pending() == 1
    (held,) = standin.datasets.values()
    assert held["pid"] == "20.500.12269/abc-1" and held["type"] == "raw"
    assert held["ownerGroup"] == "1013377" and held["accessGroups"] == ["2bm-staff"]
    assert held["principalInvestigator"] == "Jean-Luc D'Arcy" and held["contactEmail"] == "jl.darcy@example.fr"
    assert held["numberOfFiles"] == 3 and held["size"] == 3003 and held["sourceFolderHost"] == "tomo1"
    assert held["scientificMetadata"]["snapshots"]["start"]["pvs"]["energy"]["units"] == "keV"
    (block,) = standin.datablocks["20.500.12269/abc-1"]
    assert [f["path"] for f in block["dataFileList"]] == ["data/p0.h5", "data/p1.h5", "data/p2.h5"]
    assert all(auth.startswith("Bearer ") for _, path, auth in standin.calls if not path.endswith("login"))
    assert not any("access_token" in path for _, path, _ in standin.calls)  # never in the URL
    assert sender.queue.count() == 0 and sender.queue.last_sent() == "20.500.12269/abc-1"
    assert sender.send_pending() == 0  # nothing twice


def test_a_dataset_created_before_a_crash_is_not_created_again(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.queue.put("p-1", *_payload(sender, dataset("p-1")))
    sender.client.create_dataset(_payload(sender, dataset("p-1"))[0])  # sent, then the IOC died before noting it
    sender.queue.close()
    again = catalogue(tmp_path, standin, credentials)  # restart: the queue still holds it
    assert again.send_pending() == 1
    assert list(standin.datasets) == ["p-1"] and len(standin.datablocks["p-1"]) == 1


def test_scicat_down_keeps_the_dataset_waiting_and_back_sends_it_once(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    standin.stop()
    sender.submit(dataset("p-2"))
    wait_for(lambda: sender.status().answered is False, what="the failed attempt")
    status = sender.status()
    assert status.pending == 1 and "did not answer" in status.message
    standin.start()
    sender._wake.set()  # the back-off would get there too, later
    wait_for(lambda: sender.status().pending == 0, timeout=15, what="the dataset sent")
    assert sender.status().answered is True and list(standin.datasets) == ["p-2"]


def test_a_refused_login_or_dataset_says_what_scicat_answered(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    standin.password = "changed"
    with pytest.raises(CatalogError, match="SciCat refused the login of ingestor"):
        sender.client.has_dataset("p")
    standin.password = "s3cret-pw"
    refused = _payload(sender, dataset("p-3"))[0] | {"contactEmail": ""}
    with pytest.raises(CatalogError, match="HTTP 400: contactEmail should not be empty"):
        sender.client.create_dataset(refused)


def test_an_unreadable_queue_is_kept_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"not a database at all, not even close" * 10)
    queue = CatalogQueue(path)
    assert "could not be read" in queue.problem and queue.count() == 0
    assert [p.name for p in tmp_path.glob("catalog.sqlite.corrupt-*")]


def _payload(sender: ScicatCatalogue, ds: Dataset) -> tuple[dict, dict]:
    from dmagic_ioc.adapters.scicat import scicat_datablock, scicat_dataset

    return scicat_dataset(ds, sender.source_host), scicat_datablock(ds)


def test_a_refused_dataset_waits_on_and_does_not_hold_back_the_others(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    bad = _payload(sender, dataset("p-bad"))
    sender.queue.put("p-bad", bad[0] | {"ownerGroup": ""}, bad[1])
    sender.queue.put("p-good", *_payload(sender, dataset("p-good")))
    with pytest.raises(CatalogError, match="ownerGroup should not be empty"):
        sender.send_pending()
    assert list(standin.datasets) == ["p-good"] and [w[0] for w in sender.queue.waiting()] == ["p-bad"]


def test_a_missing_credentials_file_is_a_catalog_error_saying_so(tmp_path, standin):
    client = ScicatClient(standin.url, tmp_path / "absent.cred", timeout=2)
    with pytest.raises(CatalogError, match="no SciCat login: scicat.credentials: cannot read"):
        client.has_dataset("p")


def test_another_programs_database_is_kept_aside_too(tmp_path):
    import sqlite3

    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE queue (something TEXT)")
    queue = CatalogQueue(path)
    assert "not a catalogue queue" in queue.problem and queue.count() == 0
