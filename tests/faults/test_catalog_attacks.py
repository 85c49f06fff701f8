"""The catalogue's records against whoever writes the storage, and against a full state_dir, through the
installed IOC.

The proposal group may write an experiment's storage: a FIFO or a forged record planted among the records
(`{"mark": 1e18}` would hide every later file), or `metadata` swapped for a symlink or a folder of its own,
gains it nothing: the dataset is made all the same, the planted records are skipped and named, a `metadata`
not the IOC's is refused on Status (MAJOR), never followed. A catalogue queue that cannot take a dataset
(state_dir full, a tmpfs filled) says "state_dir full" and loses nothing: the files go into the next
dataset, sent once there is room. Runs as root (chown, mount).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import IOC
from ..e2e.test_catalog import with_scicat
from ..helpers import wait_for
from ..scicat_standin import ScicatStandIn
from .test_full_disk import SMALL, fill

pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(os.geteuid() != 0, reason="plants files of another user: needs root")]  # fmt: skip

NAME = "2026-11-DArcy-1013377"  # the e2e schedule's beamtime at IN_SECOND
MINOR, MAJOR = 1, 2
STRANGER = 54321  # a uid of the proposal group's, not the IOC's


def created(ioc: IOC, tmp_path: Path) -> tuple[Path, Path]:
    """Create the experiment of the second beamtime: (its raw data folder, its storage)."""
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    status, severity = ioc.command("Create")
    assert severity == 0, status
    raw = tmp_path / "data" / NAME
    raw.mkdir(parents=True, exist_ok=True)
    return raw, tmp_path / "storage" / "2026-11" / NAME


def acquire(ioc: IOC, raw: Path, names: list[str], stop: str = "DaqStop") -> tuple[str, int]:
    """DaqStart, write `names` into the raw folder, wait until they are sent, then `stop`: its Status."""
    done = ioc.get("Daq:FilesDone")
    status, severity = ioc.command("DaqStart")
    assert severity == 0, status
    for name in names:
        (raw / name).write_bytes(b"x" * 100)
    wait_for(lambda: ioc.get("Daq:FilesDone") == done + len(names), timeout=15, what=f"{names} sent")
    return ioc.command(stop)


def listed(record: Path) -> list[str]:
    return sorted(entry["path"] for entry in json.loads(record.read_text(encoding="utf-8"))["files"])


def ledger_rows(state: Path) -> int:
    """The files the transfer ledger has committed (read-only): its rows buffered meanwhile are not counted."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'transfers.sqlite'}?mode=ro", uri=True)) as ledger:
        return ledger.execute("SELECT COUNT(*) FROM files").fetchone()[0]


def forge(path: Path, number: int, mark: float) -> None:
    """A record as the IOC writes one (its head on the first line), with a mark that would hide every file."""
    head = json.dumps({"n": number, "mark": mark, "ended": "2026-11-20T18:00:00+00:00"})
    path.write_text(head[:-1] + ',\n "files": []\n}\n', encoding="utf-8")


def test_a_fifo_and_forged_records_planted_among_the_records_are_skipped_named_and_hide_nothing(config, tmp_path):
    with IOC(config, tmp_path) as ioc:
        raw, storage = created(ioc, tmp_path)
        status, severity = acquire(ioc, raw, ["a.h5"])
        assert severity == 0 and f"dataset {NAME}-1.json: 1 file" in status, status
        records = storage / "metadata"
        assert stat.S_IMODE(records.stat().st_mode) == 0o2750  # the IOC's alone, read by the storage's group
        assert stat.S_IMODE((records / f"{NAME}-1.json").stat().st_mode) == 0o640

        records.chmod(0o2770)  # as an earlier version left it: the proposal group could plant anything
        os.mkfifo(records / f"{NAME}-5.json")  # would hang the command slot for good
        forge(records / f"{NAME}-4.json", 4, 1e18)
        (records / f"{NAME}-4.json").chmod(0o660)  # the group's to rewrite
        forge(records / f"{NAME}-3.json", 3, 1e18)
        os.chown(records / f"{NAME}-3.json", STRANGER, STRANGER)  # a group member's own
        (records / f"{NAME}-2.json").symlink_to("/proc/self/environ")

        status, severity = acquire(ioc, raw, ["b.h5", "c.h5"])
        print(f"DaqStop beside planted records: {status!r}")
        assert severity == MINOR and f"dataset {NAME}-6.json: 2 files" in status, status
        for name, why in ((5, "not a regular file"), (4, "writable by its group or others"),
                          (3, f"owned by uid {STRANGER}"), (2, "a symbolic link")):  # fmt: skip
            assert f"{NAME}-{name}.json ({why})" in status, status
        assert listed(records / f"{NAME}-6.json") == ["data/b.h5", "data/c.h5"]  # since record 1: nothing hidden
        assert stat.S_IMODE(records.stat().st_mode) == 0o2750  # made the IOC's alone again

        status, severity = acquire(ioc, raw, ["d.h5"], stop="Catalog")  # the planted ones said once
        assert severity == 0 and status.startswith(f"dataset {NAME}-7.json: 1 file"), status
        assert listed(records / f"{NAME}-7.json") == ["data/d.h5"]
        assert "Traceback" not in ioc.log()


@pytest.mark.parametrize("planted", ["symlink", "foreign folder"])
def test_a_metadata_swapped_for_a_symlink_or_a_folder_of_someone_else_is_refused_naming_it(config, tmp_path, planted):
    outside = tmp_path / "outside"
    outside.mkdir()
    with IOC(config, tmp_path) as ioc:
        raw, storage = created(ioc, tmp_path)
        records = storage / "metadata"
        if planted == "symlink":
            records.symlink_to(outside, target_is_directory=True)
            why = "is a symbolic link, not followed"
        else:
            records.mkdir()
            os.chown(records, STRANGER, STRANGER)
            why = f"is not the IOC's folder of records (owned by uid {STRANGER}"
        status, severity = acquire(ioc, raw, ["a.h5"])
        print(f"DaqStop with {planted} as metadata: {status!r}")
        assert severity == MAJOR and ioc.severity("Status") == MAJOR, status
        assert status.startswith(f"DaqStop failed: metadata record not written: {records} {why}"), status
        assert ioc.get("DaqState") == "Stopped"
        assert list(outside.iterdir()) == [] and (planted == "symlink" or list(records.iterdir()) == [])

        records.unlink() if planted == "symlink" else records.rmdir()
        status, severity = ioc.command("Catalog")  # moved away: nothing was lost
        assert severity == 0 and status.startswith(f"dataset {NAME}-1.json: 1 file"), status
        assert listed(records / f"{NAME}-1.json") == ["data/a.h5"]
        assert "Traceback" not in ioc.log()


def test_a_full_state_dir_at_submit_says_so_and_the_dataset_is_sent_once_there_is_room(config, tmp_path, tmpfs):
    state = tmpfs(tmp_path / "state", size=SMALL)
    with ScicatStandIn() as standin, IOC(with_scicat(config, tmp_path, standin), tmp_path) as ioc:
        raw, storage = created(ioc, tmp_path)
        done = ioc.get("Daq:FilesDone")
        ioc.command("DaqStart")
        names = [f"proj_{i}.h5" for i in range(3)]
        for name in names:
            (raw / name).write_bytes(b"x" * 100)
        wait_for(lambda: ioc.get("Daq:FilesDone") == done + 3, timeout=15, what="the files sent")
        wait_for(lambda: ledger_rows(state) == 3, what="the files in the ledger")  # the ledger needs no room then
        filler = fill(state)

        status, severity = ioc.command("Catalog")
        print(f"Catalog on a full state_dir: {status!r}")
        assert severity == MAJOR, status
        assert status.startswith(f"Catalog failed: state_dir full: dataset {NAME}-1 not queued for SciCat in "
                                 f"{state / 'catalog.sqlite'}: database or disk is full"), status  # fmt: skip
        assert ioc.get("Catalog:Health") == "Error" and ioc.get("Catalog:Pending") == 0
        assert not (storage / "metadata" / f"{NAME}-1.json").exists()  # no record: its mark would skip the files
        assert [p.name for p in (storage / "metadata").iterdir()] == []  # nor the one written aside

        filler.unlink()
        status, severity = ioc.command("Catalog")
        assert severity == 0 and f"dataset {NAME}-1.json: 3 files" in status, status
        wait_for(lambda: ioc.get("Catalog:Pending") == 0 and ioc.get("Catalog:LastDataset"), timeout=30,
                 what="the dataset sent")  # fmt: skip
        (pid,) = standin.datasets
        assert sorted(f["path"] for f in standin.datablocks[pid][0]["dataFileList"]) == [f"data/{n}" for n in names]
        assert json.loads((storage / "metadata" / f"{NAME}-1.json").read_text())["pid"] == pid
        wait_for(lambda: ioc.get("Catalog:Health") == "OK", what="Catalog:Health OK")
        log = ioc.log()
        assert "Traceback" not in log and "cannot rollback" not in log, log
