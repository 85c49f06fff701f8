"""The SciCat adapter against the strict local stand-in (tests/scicat_standin.py): what it sends, the queue,
never twice, the account's rights."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest
import requests
from dmagic_ioc.adapters.scicat.account import account_problems
from dmagic_ioc.adapters.scicat.bodies import scicat_datablocks, scicat_dataset
from dmagic_ioc.adapters.scicat.catalogue import ScicatCatalogue
from dmagic_ioc.adapters.scicat.client import ScicatClient, Unreachable
from dmagic_ioc.adapters.scicat.queue import CatalogQueue, QueueFull
from dmagic_ioc.ioc.domain.catalog_ports import CatalogFile, Dataset
from dmagic_ioc.ioc.domain.errors import CatalogError

from ..helpers import wait_for
from ..scicat_standin import ScicatStandIn


def dataset(pid: str = "20.500.12269/abc-1", files: int = 3, **changes) -> Dataset:
    fields = dict(
        pid=pid, name="2026-11-DArcy-1013377-1", description="Fast 4D imaging of foam coarsening",
        owner="Jean-Luc D'Arcy", contact_email="jl.darcy@example.fr", principal_investigator="Jean-Luc D'Arcy",
        owner_group="1013377", access_groups=("2bm-staff", "ingestor"), proposal_id="1013377",
        source_folder="/gdata/dm/2BM/2026-11/2026-11-DArcy-1013377", creation_location="APS/2-BM-A,B",
        creation_time="2026-11-20T12:00:00-06:00", end_time="2026-11-20T12:30:00-06:00",
        files=tuple(CatalogFile(f"data/p{i}.h5", 1000 + i, "2026-11-20T18:10:00+00:00") for i in range(files)),
        scientific_metadata={"snapshots": {"start": {"pvs": {"energy": {"value": 25.5, "units": "keV"}}}}},
        owner_email="jl.darcy@example.fr",
    )  # fmt: skip
    return Dataset(**{**fields, **changes})


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


def catalogue(tmp_path, standin, credentials, host: str = "tomo1.aps.anl.gov") -> ScicatCatalogue:
    return ScicatCatalogue(ScicatClient(standin.url, credentials, timeout=2), tmp_path / "catalog.sqlite", host)


def queue(sender: ScicatCatalogue, ds: Dataset, **split) -> None:
    sender.queue.put(ds.pid, scicat_dataset(ds, sender.source_host), scicat_datablocks(ds.files, **split))


def logins(standin: ScicatStandIn) -> int:
    return sum(1 for _, path, _ in standin.calls if path.endswith("/auth/login"))


def test_the_standin_answers_as_scicat_does(standin):
    api = standin.url + "/"
    assert requests.post(api + "datasets", json={"type": "raw"}, timeout=5).status_code == 403  # anonymous
    said = requests.post(api + "auth/Login", json={"username": standin.username, "password": standin.password},
                         timeout=5)  # fmt: skip
    assert said.status_code == 201 and said.json()["access_token"] == said.json()["id"]
    headers = {"Authorization": f"bearer {said.json()['access_token']}"}
    missing = requests.post(api + "Datasets", json={"type": "raw", "owner": "x"}, headers=headers, timeout=5)
    assert missing.status_code == 400 and "contactEmail must be an email" in missing.json()["message"]
    body = json.dumps({**scicat_dataset(dataset("p-nan")), "dataQualityMetrics": float("nan")})
    nan = requests.post(api + "datasets", data=body, headers={**headers, "Content-Type": "application/json"},
                        timeout=5)  # fmt: skip
    assert nan.status_code == 400 and "NaN" in nan.json()["message"][0]
    assert requests.get(api + "datasets/nope/OrigDatablocks/count", headers=headers, timeout=5).status_code == 404
    assert requests.get(api + "auth/whoami", headers=headers, timeout=5).json()["currentGroups"] == ["ingestor"]


def test_a_dataset_is_created_with_what_scicat_declares_and_counted_once_from_its_blocks(
    tmp_path, standin, credentials
):
    sender = catalogue(tmp_path, standin, credentials)
    queue(sender, dataset(files=5), max_files=2)
    assert sender.send_pending() == 1
    (held,) = standin.datasets.values()
    assert (
        held["pid"] == "20.500.12269/abc-1"
        and held["type"] == "raw"
        and held["sourceFolderHost"] == "tomo1.aps.anl.gov"
    )
    assert held["ownerGroup"] == "1013377" and held["accessGroups"] == ["2bm-staff", "ingestor"]
    assert held["principalInvestigator"] == "Jean-Luc D'Arcy" and held["contactEmail"] == "jl.darcy@example.fr"
    assert held["numberOfFiles"] == 5 and held["size"] == 5010  # SciCat's own sum of its origdatablocks ($inc)
    assert held["creationTime"] == "2026-11-20T18:00:00+00:00"
    blocks = standin.datablocks["20.500.12269/abc-1"]
    listed = [[f["path"] for f in b["dataFileList"]] for b in blocks]
    assert listed == [["data/p0.h5", "data/p1.h5"], ["data/p2.h5", "data/p3.h5"], ["data/p4.h5"]]
    assert all(auth.startswith("Bearer ") for _, path, auth in standin.calls if not path.endswith("login"))
    assert not any("access_token" in path for _, path, _ in standin.calls)  # never in the URL
    assert sender.queue.count() == 0 and sender.queue.last_sent() == "20.500.12269/abc-1"
    assert sender.send_pending() == 0  # nothing twice


def test_a_dataset_without_files_is_complete_once_created(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.submit(dataset("p-empty", files=0))
    wait_for(lambda: sender.status().pending == 0, what="the dataset sent")
    assert standin.datasets["p-empty"]["numberOfFiles"] == 0 and "p-empty" not in standin.datablocks


def test_a_dataset_created_before_a_crash_is_not_created_again(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    queue(sender, dataset("p-1"))
    sender.client.create_dataset(scicat_dataset(dataset("p-1")))  # sent, then the IOC died before noting it
    sender.queue.close()
    again = catalogue(tmp_path, standin, credentials)  # restart: the queue still holds it
    assert again.send_pending() == 1
    assert list(standin.datasets) == ["p-1"] and len(standin.datablocks["p-1"]) == 1


def test_after_a_restart_only_the_origdatablocks_scicat_lacks_are_sent_found_by_a_count(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    ds = dataset("p-7", files=5)
    queue(sender, ds, max_files=2)
    blocks = scicat_datablocks(ds.files, max_files=2)
    sender.client.create_dataset(scicat_dataset(ds, sender.source_host))
    sender.queue.advance("p-7", "datablock")
    sender.client.create_datablock("p-7", blocks[0])
    sender.queue.note_blocks("p-7", 1)
    sender.client.create_datablock("p-7", blocks[1])  # taken by SciCat; the IOC died before noting it
    sender.queue.close()
    standin.calls.clear()
    again = catalogue(tmp_path, standin, credentials)
    assert again.send_pending() == 1
    assert [len(b["dataFileList"]) for b in standin.datablocks["p-7"]] == [2, 2, 1]
    assert standin.datasets["p-7"]["numberOfFiles"] == 5 and standin.datasets["p-7"]["size"] == 5010
    asked = [(method, path) for method, path, _ in standin.calls if not path.endswith("login")]
    blocks_route = "/api/v3/datasets/p-7/origdatablocks"
    assert asked == [("GET", f"{blocks_route}/count"), ("POST", blocks_route)]  # a count, never the whole list


def test_scicat_down_keeps_the_dataset_waiting_and_back_sends_it_once(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    standin.stop()
    sender.submit(dataset("p-2"))
    wait_for(lambda: sender.status().answered is False, what="the failed attempt")
    status = sender.status()
    assert status.pending == 1 and status.message.endswith("could not be reached: connection refused")
    assert status.oldest_pid == "p-2" and status.waiting_since is not None  # how long it waits: the IOC's rule
    standin.start()
    sender._wake.set()  # the back-off would get there too, later
    wait_for(lambda: sender.status().pending == 0, timeout=15, what="the dataset sent")
    assert sender.status().answered is True and list(standin.datasets) == ["p-2"]


def test_an_account_that_may_not_create_under_the_iocs_pid_is_named_with_what_it_lacks(tmp_path, credentials):
    with ScicatStandIn(privileged_groups=()) as standin:  # SciCat's default: #all may create, without a pid
        sender = catalogue(tmp_path, standin, credentials)
        queue(sender, dataset("p-3"))
        with pytest.raises(CatalogError) as refused:
            sender.send_pending()
    assert str(refused.value) == (
        "the SciCat account ingestor may not create dataset p-3 under the IOC's pid: it must be in SciCat's "
        "CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS) (SciCat answered POST datasets with HTTP 403: "
        "Unauthorized to create this dataset)"
    )
    assert sender.queue.count() == 1 and not standin.datasets


def test_an_account_that_may_not_read_its_dataset_back_is_named_with_the_groups_it_needs(
    tmp_path, standin, credentials
):
    sender = catalogue(tmp_path, standin, credentials)
    ds = dataset("p-4", access_groups=("2bm-staff",))
    sender.client.create_dataset(scicat_dataset(ds))  # privileged: created, but not readable by it
    queue(sender, ds)
    with pytest.raises(CatalogError, match="ingestor may not read dataset p-4 back: it must be a member of one of "
                                           r"its accessGroups \(scicat.access_groups: 2bm-staff\) \(SciCat answered "
                                           r"GET datasets/\{pid\} with HTTP 403: Unauthorized access\)"):  # fmt: skip
        sender.send_pending()
    assert sender.queue.count() == 1 and "p-4" not in standin.datablocks


def test_a_token_scicat_no_longer_takes_is_renewed_on_its_403_and_on_its_401(tmp_path, standin, credentials):
    client = ScicatClient(standin.url, credentials, timeout=2)
    assert not client.has_dataset("p-5") and logins(standin) == 1
    standin.forget_tokens()  # SciCat's secret changed: the old token makes the calls anonymous, 403
    client.create_dataset(scicat_dataset(dataset("p-5")))
    assert logins(standin) == 2 and "p-5" in standin.datasets
    standin.expire_tokens()  # 401 SESSION_EXPIRED
    assert client.count_datablocks("p-5") == 0 and logins(standin) == 3


def test_a_refused_login_or_dataset_says_what_scicat_answered(tmp_path, standin, credentials):
    client = ScicatClient(standin.url, credentials, timeout=2)
    standin.password = "changed"
    with pytest.raises(CatalogError, match="SciCat refused the login of ingestor"):
        client.has_dataset("p")
    standin.password = "s3cret-pw"
    refused = scicat_dataset(dataset("p-3")) | {"contactEmail": "", "size": 1.5}
    with pytest.raises(CatalogError, match="HTTP 400: contactEmail must be an email or emails separated by ;; "
                                           "size must be an integer number"):  # fmt: skip
        client.create_dataset(refused)


def test_a_backend_without_auth_login_is_said_not_to_be_supported(standin, credentials):
    client = ScicatClient(standin.url.replace("/api/v3", "/api/v2"), credentials, timeout=2)  # 404, as on LoopBack
    with pytest.raises(CatalogError, match="has no auth/login: not SciCat's current backend"):
        client.has_dataset("p")


def test_a_full_state_dir_refuses_the_dataset_saying_so_and_leaves_the_queue_as_it_was(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    db = sender.queue._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full state_dir does to SQLite: SQLITE_FULL
    big = dataset("p-full", scientific_metadata={"notes": "x" * 200_000})
    for _ in range(2):  # and again: no transaction left open by the first
        with pytest.raises(QueueFull) as full:
            sender.submit(big)
        assert str(full.value) == (f"state_dir full: dataset 2026-11-DArcy-1013377-1 not queued for SciCat in "
                                   f"{tmp_path / 'catalog.sqlite'}: database or disk is full")  # fmt: skip
        assert full.value.system == "Catalog" and not db.in_transaction and sender.queue.count() == 0
    db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    sender.submit(big)
    wait_for(lambda: "p-full" in standin.datasets and sender.status().pending == 0, timeout=15, what="sent")


def test_a_queue_that_cannot_be_read_is_said_once_and_the_sender_lives_on(tmp_path, standin, credentials, caplog):
    sender = catalogue(tmp_path, standin, credentials)
    sender.FIRST_RETRY = sender.retry = 0.01
    count, failures = sender.queue.count, []

    def failing_count():
        if len(failures) < 3:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        return count()

    sender.queue.count = failing_count
    sender.submit(dataset("p-io"))  # starts the sender, whose first reads fail
    wait_for(lambda: "p-io" in standin.datasets, timeout=15, what="the dataset sent after the failures")
    wait_for(lambda: sender.status().pending == 0, what="the queue emptied")
    assert sender._thread is not None and sender._thread.is_alive() and len(failures) == 3
    said = [r.getMessage() for r in caplog.records if "cannot read the catalogue queue" in r.getMessage()]
    assert said == [f"catalogue: cannot read the catalogue queue {tmp_path / 'catalog.sqlite'}: disk I/O error; "
                    "retrying with back-off (said once)"]  # fmt: skip
    assert not [r for r in caplog.records if r.exc_info]  # no traceback: a disk error is no bug


def test_a_queue_the_status_cannot_read_is_an_error_saying_why(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)

    def unreadable():
        raise sqlite3.OperationalError("disk I/O error")

    sender.queue.oldest = unreadable
    status = sender.status()
    assert status.answered is False
    assert status.message == f"cannot read the catalogue queue {tmp_path / 'catalog.sqlite'}: disk I/O error"


def test_an_unreadable_queue_is_kept_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"not a database at all, not even close" * 10)
    kept = CatalogQueue(path)
    assert "could not be read" in kept.problem and kept.count() == 0
    assert [p.name for p in tmp_path.glob("catalog.sqlite.corrupt-*")]


def test_another_programs_database_is_kept_aside_too(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE queue (something TEXT)")
    kept = CatalogQueue(path)
    assert "not a catalogue queue" in kept.problem and kept.count() == 0


def test_a_dataset_queued_by_an_earlier_version_is_sent_as_scicat_takes_it(tmp_path, standin, credentials):
    earlier = {"pid": "p-old", "type": "raw", "datasetName": "x-1", "owner": "Ada", "ownerEmail": "a@x.org;b@x.org",
               "contactEmail": "ada@example.org", "principalInvestigator": "Ada", "ownerGroup": "p1",
               "accessGroups": ["ingestor"], "proposalId": "", "sourceFolder": "/s/x", "sourceFolderHost": "tomo1",
               "creationLocation": "APS", "creationTime": "2026-11-20T12:00:00-06:00",
               "endTime": "2026-11-20T12:30:00-06:00", "numberOfFiles": 1, "size": 5, "isPublished": False,
               "scientificMetadata": {}}  # fmt: skip
    file = {"path": "a.h5", "size": 5, "time": "2026-11-20T18:00:00+00:00", "chk": "blake2b:ab"}
    block = {"datasetId": "p-old", "size": 5, "ownerGroup": "p1", "accessGroups": ["ingestor"], "dataFileList": [file]}
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        db.execute("CREATE TABLE queue (pid TEXT PRIMARY KEY, stage TEXT NOT NULL, dataset TEXT NOT NULL,"
                   " datablock TEXT NOT NULL, queued_at REAL NOT NULL)")  # fmt: skip
        db.execute("INSERT INTO queue VALUES ('p-old', 'dataset', ?, ?, 1.0)", (json.dumps(earlier), json.dumps(block)))
    sender = catalogue(tmp_path, standin, credentials)
    assert not sender.queue.problem and sender.send_pending() == 1
    held = standin.datasets["p-old"]
    assert held["size"] == 5 and held["numberOfFiles"] == 1 and not {"ownerEmail", "sourceFolderHost"} & set(held)
    (sent,) = standin.datablocks["p-old"]
    assert sent["chkAlg"] == "blake2b" and sent["dataFileList"][0]["chk"] == "ab"


def test_a_refused_dataset_waits_on_and_does_not_hold_back_the_others(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    bad = dataset("p-bad")
    sender.queue.put("p-bad", scicat_dataset(bad) | {"ownerGroup": ""}, scicat_datablocks(bad.files))
    queue(sender, dataset("p-good"))
    with pytest.raises(CatalogError, match="ownerGroup should not be empty"):
        sender.send_pending()
    assert list(standin.datasets) == ["p-good"] and sender.queue.pids() == ["p-bad"]


def test_a_missing_credentials_file_is_a_catalog_error_saying_so(tmp_path, standin):
    client = ScicatClient(standin.url, tmp_path / "absent.cred", timeout=2)
    with pytest.raises(CatalogError, match="no SciCat login: scicat.credentials: cannot read"):
        client.has_dataset("p")


def test_a_host_name_without_a_domain_is_not_sent_as_source_folder_host(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials, host="tomo1")
    assert sender.source_host == ""
    sender.submit(dataset("p-host"))
    wait_for(lambda: sender.status().pending == 0, what="the dataset sent")
    assert "sourceFolderHost" not in standin.datasets["p-host"]


def test_a_scicat_answering_200_ok_to_everything_keeps_the_dataset_queued_and_says_so(tmp_path, standin, credentials):
    standin.answer_all = (200, {"status": "ok"})
    sender = catalogue(tmp_path, standin, credentials)
    sender.submit(dataset("p-ok"))
    wait_for(lambda: sender.status().answered is False, what="the answer refused")
    status = sender.status()
    assert status.pending == 1 and status.oldest_pid == "p-ok" and status.last_pid == ""
    assert status.message == 'SciCat answered GET datasets/{pid} with HTTP 200 but not dataset p-ok: {"status": "ok"}'
    assert not [path for method, path, _ in standin.calls if method == "POST" and not path.endswith("login")]
    client, ds = sender.client, dataset("p-ok")
    with pytest.raises(CatalogError, match="POST datasets with HTTP 200 but not dataset p-ok"):
        client.create_dataset(scicat_dataset(ds))
    with pytest.raises(CatalogError, match="origdatablocks/count with HTTP 200 but not a count of p-ok's"):
        client.count_datablocks("p-ok")
    with pytest.raises(CatalogError, match="POST datasets/{pid}/origdatablocks with HTTP 200 but not an origdatab"):
        client.create_datablock("p-ok", scicat_datablocks(ds.files)[0])

    standin.answer_all = None  # SciCat sane again: sent once
    sender._wake.set()
    wait_for(lambda: sender.status().pending == 0, timeout=15, what="the dataset sent")
    assert list(standin.datasets) == ["p-ok"] and len(standin.datablocks["p-ok"]) == 1


def test_another_datasets_answer_is_not_this_one(tmp_path, standin, credentials):
    client = ScicatClient(standin.url, credentials, timeout=2)
    body = scicat_dataset(dataset("p-other"))
    client.create_dataset(body)
    standin.answer_all = (200, {**body, "pid": "p-else"})
    with pytest.raises(CatalogError, match="but not dataset p-other"):
        client.has_dataset("p-other")
    standin.answer_all = (200, {"count": True})
    with pytest.raises(CatalogError, match="but not a count of p-other's origdatablocks"):
        client.count_datablocks("p-other")
    standin.answer_all = None
    assert client.has_dataset("p-other") and client.count_datablocks("p-other") == 0
    assert not client.has_dataset("p-none")  # 404


def test_a_redirect_is_not_followed_and_the_password_never_leaves(tmp_path, standin, credentials):
    with ScicatStandIn(standin.username, standin.password) as elsewhere:
        standin.redirect_to = elsewhere.url
        client = ScicatClient(standin.url, credentials, timeout=2)
        with pytest.raises(Unreachable) as raised:
            client.has_dataset("p")
        assert str(raised.value) == (f"SciCat at {standin.url}/ answered HTTP 307 (a redirect to "
                                     f"127.0.0.1:{elsewhere.port}): redirects are not followed")  # fmt: skip
        assert elsewhere.calls == [] and not elsewhere.tokens
        assert [path for _, path, _ in standin.calls] == ["/api/v3/auth/login"]  # once, not followed nor retried


# ------------------------------------------------------------------ --check: the account's rights


def check(standin: ScicatStandIn, credentials, access_groups=("2bm-staff", "ingestor")) -> list[str]:
    client = ScicatClient(standin.url, credentials, timeout=2)
    return account_problems(client, access_groups, "2bm-staff@aps.anl.gov")


def test_check_finds_nothing_missing_in_an_account_that_may_create_and_read_back(standin, credentials):
    assert check(standin, credentials) == []
    assert not standin.datasets  # it asked datasets/isValid: nothing created


@pytest.mark.parametrize(
    ("rights", "access_groups", "said"),
    [
        ({"privileged_groups": ()}, ("ingestor",),
         "scicat.credentials: the SciCat account ingestor may not create datasets under the IOC's pids: it must be "
         "in SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS) (its groups: ingestor)"),
        ({"groups": ("ingestor", "p1")}, ("2bm-staff",),
         "scicat.access_groups: the SciCat account ingestor is in none of them (its groups: ingestor, p1): it could "
         "not read back the datasets it creates; add one of its groups"),
        ({"pid_pattern": "^[0-9A-F-]+$"}, ("ingestor",),
         "scicat: a dataset under the IOC's pid (a lower-case UUID) is refused: SciCat answered POST datasets/isValid"
         " with HTTP 400: PID is not following required standards"),
    ],
)  # fmt: skip
def test_check_says_what_the_account_lacks_under_the_key_that_mends_it(credentials, rights, access_groups, said):
    with ScicatStandIn(**rights) as standin:  # the same account (user, password), other rights
        assert check(standin, credentials, access_groups) == [said]


def test_check_names_a_refused_login_and_a_scicat_that_does_not_answer(standin, credentials):
    standin.password = "changed"
    assert check(standin, credentials) == ["scicat.credentials: SciCat refused the login of ingestor (HTTP 401: "
                                           "Unauthorized)"]  # fmt: skip
    standin.stop()
    (problem,) = check(standin, credentials)
    assert problem.startswith("scicat.url: SciCat at ") and problem.endswith("connection refused")


# ------------------------------------------------------------------ a large dataset: staged as its files come


def files_of(count: int, start: int = 0) -> list[CatalogFile]:
    return [CatalogFile(f"data/p{i}.h5", 1000 + i, "2026-11-20T18:10:00+00:00", f"md5:{i:032x}")
            for i in range(start, start + count)]  # fmt: skip


def test_a_dataset_staged_as_its_files_come_is_sent_once_committed_in_blocks_in_order(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.BLOCK_FILES = 3
    staged = sender.stage(dataset("p-big", files=0))
    staged.add(files_of(4))
    staged.add(files_of(6, start=4))
    assert sender.queue.pids() == [] and sender.status().pending == 0  # staged: not waiting, not sent
    assert sender.send_pending() == 0 and not standin.datasets
    staged.commit()
    wait_for(lambda: sender.status().pending == 0, what="the dataset sent")
    blocks = standin.datablocks["p-big"]
    assert [[f["path"] for f in block["dataFileList"]] for block in blocks] == [
        ["data/p0.h5", "data/p1.h5", "data/p2.h5"], ["data/p3.h5", "data/p4.h5", "data/p5.h5"],
        ["data/p6.h5", "data/p7.h5", "data/p8.h5"], ["data/p9.h5"],
    ]  # fmt: skip
    assert all(block["chkAlg"] == "md5" for block in blocks)
    assert standin.datasets["p-big"]["numberOfFiles"] == 10 and standin.datasets["p-big"]["size"] == 10_045
    assert sender.queue._db.execute("SELECT COUNT(*) FROM blocks").fetchone() == (0,)  # sent: forgotten


def test_an_origdatablock_stays_within_the_bytes_scicat_takes_however_long_its_paths(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.BLOCK_BYTES = 64 * 1024
    long = [CatalogFile("d/" * 1000 + f"{i}.h5", 1, "2026-11-20T18:10:00+00:00") for i in range(100)]
    sender.submit(replace(dataset("p-long", files=0), files=tuple(long)))
    wait_for(lambda: sender.status().pending == 0, what="the dataset sent")
    posted = [body for path, body in standin.posted if path.endswith("/origdatablocks")]
    assert len(posted) == 4 and sum(len(body["dataFileList"]) for body in posted) == 100
    assert all(len(json.dumps(body)) <= 64 * 1024 + 2100 for body in posted)  # one file past the bound at most


def test_a_dataset_staged_and_not_committed_is_forgotten_at_a_restart_and_by_a_drop(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.BLOCK_FILES = 2
    sender.stage(dataset("p-left", files=0)).add(files_of(5))  # the IOC stopped before the commit
    sender.queue.close()
    again = catalogue(tmp_path, standin, credentials)
    assert again.queue.count() == 0 and again.queue._db.execute("SELECT COUNT(*) FROM blocks").fetchone() == (0,)
    staged = again.stage(dataset("p-dropped", files=3))
    staged.add(files_of(4))
    staged.drop()
    assert again.queue._db.execute("SELECT COUNT(*) FROM queue").fetchone() == (0,)
    assert again.send_pending() == 0 and not standin.datasets


def test_a_full_state_dir_while_a_dataset_is_staged_refuses_it_and_leaves_nothing_of_it(tmp_path, standin, credentials):
    sender = catalogue(tmp_path, standin, credentials)
    sender.BLOCK_FILES = 10
    staged = sender.stage(dataset("p-full", files=0))
    db = sender.queue._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0] + 2}")
    with pytest.raises(QueueFull, match="state_dir full: dataset 2026-11-DArcy-1013377-1 not queued for SciCat"):
        for start in range(0, 5000, 100):
            staged.add(files_of(100, start))
    staged.drop()
    assert sender.queue.count() == 0 and not db.in_transaction
    db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    sender.submit(dataset("p-after", files=3))
    wait_for(lambda: "p-after" in standin.datasets and sender.status().pending == 0, what="sent")
    assert list(standin.datasets) == ["p-after"] and db.execute("SELECT COUNT(*) FROM blocks").fetchone() == (0,)


def test_a_dataset_the_previous_version_queued_with_its_blocks_in_one_column_sends_those_left(
    tmp_path, standin, credentials
):
    sender = catalogue(tmp_path, standin, credentials)
    ds = dataset("p-prev", files=5)
    body, blocks = scicat_dataset(ds, sender.source_host), scicat_datablocks(ds.files, max_files=2)
    sender.client.create_dataset(body)
    sender.client.create_datablock("p-prev", blocks[0])
    sender.queue._db.execute("INSERT INTO queue VALUES ('p-prev', 'datablock', ?, ?, 1.0, 1)",
                             (json.dumps(body), json.dumps(blocks)))  # fmt: skip
    assert sender.send_pending() == 1
    assert [len(block["dataFileList"]) for block in standin.datablocks["p-prev"]] == [2, 2, 1]
    assert standin.datasets["p-prev"]["numberOfFiles"] == 5
