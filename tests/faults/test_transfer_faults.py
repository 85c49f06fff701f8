"""Transfers against a faulty world, through the installed IOC: symlinks out of the source folders, storage
that is deleted or unmounted (a real tmpfs, where the tests run as root), a file name that is not UTF-8,
and a transfer ledger that cannot be read."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ..adapters.test_transfer import damage
from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import IOC
from ..helpers import wait_for

pytestmark = pytest.mark.faults

NAME = "2026-11-DArcy-1013377"
MARKER = ".dmagic-storage"
MAJOR = 2


def create(ioc: IOC) -> None:
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    status, severity = ioc.command("Create")
    assert severity == 0, status


def settled(path: Path, data: bytes) -> Path:
    """A file written a minute ago: an upload sends it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def status_saying(ioc: IOC, words: str, timeout: float = 30.0) -> str:
    """Wait for Status to contain `words`; return it."""
    return wait_for(lambda: words in (status := ioc.get("Status")) and status, timeout=timeout, what=repr(words))


def upload(ioc: IOC) -> str:
    """Run Upload to its end; return its summary."""
    status, severity = ioc.command("Upload")
    assert severity == 0, status
    return status_saying(ioc, "finished")


# ------------------------------------------------------------------ symlinks


def test_a_rec_folder_that_is_a_symlink_is_refused_and_nothing_is_copied(ioc, tmp_path):
    create(ioc)
    rec = tmp_path / "data" / f"{NAME}_rec"
    secrets = tmp_path / "etc"
    settled(secrets / "shadow", b"root:$6$secret")
    rec.rmdir()
    rec.symlink_to(secrets, target_is_directory=True)  # ln -s /etc {DataDirectory}_rec
    settled(tmp_path / "data" / NAME / "a.h5", b"a")

    for command in ("Upload", "DaqStart"):
        status, severity = ioc.command(command)
        assert severity == MAJOR, status
        assert f"source folder {rec} is reached through a symbolic link: refused" in status

    storage = tmp_path / "storage" / "2026-11" / NAME
    assert files_under(storage) == {MARKER}
    assert ioc.get("DaqState") == "Stopped"


def test_symlinks_inside_the_source_are_not_followed_and_the_summary_says_so(ioc, tmp_path):
    create(ioc)
    raw = tmp_path / "data" / NAME
    secrets = tmp_path / "etc"
    settled(secrets / "shadow", b"root:$6$secret")
    settled(raw / "scan1" / "proj.h5", b"proj")
    (raw / "scan1" / "shadow").symlink_to(secrets / "shadow")
    (raw / "etc").symlink_to(secrets, target_is_directory=True)

    summary = upload(ioc)

    assert "1 files" in summary and "2 not followed (symbolic links, special files)" in summary
    assert files_under(tmp_path / "storage" / "2026-11" / NAME / "data") == {"scan1/proj.h5"}


# ------------------------------------------------------------------ storage that goes away


def unmount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], check=True)
    assert not os.path.ismount(point)


def test_storage_unmounted_while_daq_runs_is_an_error_and_nothing_lands_under_the_mount_point(ioc, tmp_path, tmpfs):
    month = tmpfs(tmp_path / "storage" / "2026-11")  # the disk the experiment's storage is on
    create(ioc)
    storage, raw = month / NAME, tmp_path / "data" / NAME
    (raw / "a.h5").write_bytes(b"a")
    status, severity = ioc.command("DaqStart")
    assert severity == 0, status
    wait_for(lambda: (storage / "data" / "a.h5").exists(), timeout=15, what="a.h5 on the mounted disk")

    unmount(month)
    (raw / "b.h5").write_bytes(b"b")

    wait_for(lambda: ioc.get("DaqState") == "Error", timeout=15, what="DaqState Error")
    assert ioc.severity("DaqState") == MAJOR
    status_saying(ioc, f"the storage {storage} of {NAME} is missing")
    assert ioc.severity("Status") == MAJOR
    wait_for(lambda: ioc.get("Daq:FilesTotal") == 2, timeout=15, what="b.h5 seen")
    assert list(month.iterdir()) == []  # nothing under the mount point, on the disk below it

    ioc.command("DaqStop")
    for command in ("DaqStart", "Create"):  # neither the transfer nor Create makes that storage again
        status, severity = ioc.command(command)
        assert severity == MAJOR and str(storage) in status, (command, status)
    assert list(month.iterdir()) == []


def test_storage_deleted_while_daq_runs_is_an_error_not_a_new_folder(ioc, tmp_path):
    create(ioc)
    storage, raw = tmp_path / "storage" / "2026-11" / NAME, tmp_path / "data" / NAME
    (raw / "a.h5").write_bytes(b"a")
    ioc.command("DaqStart")
    wait_for(lambda: (storage / "data" / "a.h5").exists(), timeout=15, what="a.h5")

    shutil.rmtree(storage)  # rm -rf of the experiment's storage
    (raw / "b.h5").write_bytes(b"b")

    wait_for(lambda: ioc.get("DaqState") == "Error", timeout=15, what="DaqState Error")
    assert ioc.severity("DaqState") == MAJOR
    status_saying(ioc, f"the storage {storage} of {NAME} is missing")
    wait_for(lambda: ioc.get("Daq:FilesTotal") == 2, timeout=15, what="b.h5 seen")
    assert not storage.exists()

    ioc.command("DaqStop")  # the way back: Delete, Create, DaqStart; every file arrives again
    ioc.put("DeleteConfirm", NAME)
    status, severity = ioc.command("Delete")
    assert severity == 0 and "already gone" in status, status
    create(ioc)
    ioc.command("DaqStart")
    wait_for(lambda: files_under(storage / "data") == {"a.h5", "b.h5"}, timeout=15, what="every file again")
    ioc.command("DaqStop")


def test_create_manual_on_a_storage_root_whose_disk_went_is_refused(config, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk")
    (disk / "dm").mkdir()
    config["dm"]["storage_root"] = str(disk / "dm")
    with IOC(config, tmp_path) as ioc:
        unmount(disk)

        status, severity = ioc.command("CreateManual")

        assert severity == MAJOR and f"dm.storage_root: {disk / 'dm'} does not exist" in status
        assert list(disk.iterdir()) == []


# ------------------------------------------------------------------ a file name that is not UTF-8

ODD = b"scan\xff.tif"


def test_a_file_name_that_is_not_utf8_travels_and_never_wedges_the_engine(ioc, tmp_path):
    create(ioc)
    raw = tmp_path / "data" / NAME
    odd = settled(Path(os.fsdecode(os.path.join(os.fsencode(raw), ODD))), b"odd")
    settled(raw / "ok.tif", b"ok")

    summary = upload(ioc)

    assert "2 files" in summary and ioc.severity("Status") == 0
    dest = os.fsencode(tmp_path / "storage" / "2026-11" / NAME / "data")
    assert sorted(os.listdir(dest)) == sorted([b"ok.tif", ODD])
    assert "scan\\xff.tif" in ioc.log() and "is not UTF-8: sent under the same bytes" in ioc.log()

    status, severity = ioc.command("DaqStart")
    assert severity == 0, status
    odd.write_bytes(b"odd, rewritten")
    (raw / "new.h5").write_bytes(b"new")
    copy = Path(os.fsdecode(os.path.join(dest, ODD)))
    wait_for(lambda: (copy.parent / "new.h5").exists(), timeout=15, what="a new file")
    wait_for(lambda: copy.read_bytes() == b"odd, rewritten", timeout=15, what="the rewritten odd file")
    wait_for(lambda: ioc.get("Daq:LastFile").endswith(("new.h5", "scan\\xff.tif")), what="Daq:LastFile")
    assert ioc.get("DaqState") == "Running"
    for command in ("DaqStop", "DaqStart", "DaqStop"):
        status, severity = ioc.command(command)
        assert severity == 0, (command, status)


# ------------------------------------------------------------------ a transfer ledger that cannot be read


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_an_unreadable_ledger_is_kept_aside_said_major_and_nothing_is_sent_twice(config, tmp_path, how):
    raw, data = tmp_path / "data" / NAME, tmp_path / "storage" / "2026-11" / NAME / "data"
    with IOC(config, tmp_path) as ioc:
        create(ioc)
        for i in range(200):
            settled(raw / f"d{i % 4}" / f"f{i:03d}.h5", b"%d" % i)
        assert "200 files" in upload(ioc)
    ledger = tmp_path / "state" / "transfers.sqlite"
    with sqlite3.connect(ledger) as db:  # everything in the main file, so that damaging it damages the ledger
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    inodes = {p: p.stat().st_ino for p in data.rglob("*.h5")}
    damaged = damage(ledger, how)

    with IOC(config, tmp_path) as ioc:
        status = status_saying(ioc, "could not be read")
        assert ioc.severity("Status") == MAJOR
        assert ioc.get("DaqState") == "Error" and ioc.severity("DaqState") == MAJOR
        kept = [p for p in ledger.parent.iterdir() if p.name.startswith("transfers.sqlite.corrupt-")]
        kept = [p for p in kept if not p.name.endswith(("-wal", "-shm"))]
        assert len(kept) == 1 and kept[0].read_bytes() == damaged and f"kept it as {kept[0].name}" in status

        summary = upload(ioc)

        assert "0 files" in summary and "(200 already there)" in summary
        assert {p: p.stat().st_ino for p in data.rglob("*.h5")} == inodes
        assert ioc.get("DaqState") == "Stopped"
