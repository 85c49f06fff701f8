"""A full disk through the installed IOC: `state_dir` or the storage on a small tmpfs, filled to the last byte.

Status says "state_dir full" or "storage full" (MAJOR) and DM:Health shows Error, never an internal error;
once space is back the next command works and nothing written before is lost. Mounting needs root: the
tests skip elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import DMAGIC_IOC, IOC
from ..helpers import wait_for

pytestmark = pytest.mark.faults

MAJOR = 2
NAME = "2026-11-DArcy-1013377"
FILLER = ".filler"


SMALL = "2m"  # the size of the disk filled


def fill(disk: Path) -> Path:
    """Write `disk`/.filler until the disk is full; its path (unlink it to free the space)."""
    filler = disk / FILLER
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def status_saying(ioc: IOC, words: str, timeout: float = 15.0) -> str:
    return wait_for(lambda: words in (status := ioc.get("Status")) and status, timeout=timeout, what=repr(words))


def create_current(ioc: IOC) -> tuple[str, int]:
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    return ioc.command("Create")


# ------------------------------------------------------------------ state_dir full


def saved(autosave: Path, **values) -> bool:
    """The autosave file holds `values` (settings, by PV name without the prefix)."""
    try:
        held = json.loads(autosave.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(held.get(name) == value for name, value in values.items())


def test_a_full_state_dir_is_said_and_the_next_command_after_space_is_back_works(config, tmp_path, tmpfs):
    state = tmpfs(tmp_path / "state", size=SMALL)
    with IOC(config, tmp_path) as ioc:
        status, severity = create_current(ioc)
        assert severity == 0, status
        users = ioc.get("ExperimentUsers").split(",")
        ioc.put("Badges", "310013")
        ioc.put("Manual:LastName", "Full")
        # Settings saved before the disk fills: autosave has nothing to say while it is full.
        wait_for(lambda: saved(state / "autosave.json", Badges="310013", **{"Manual:LastName": "Full"}),
                 what="autosave")  # fmt: skip
        filler = fill(state)

        status, severity = ioc.command("AddUser")
        print(f"AddUser on a full state_dir: {status!r}, severity {severity}, DM:Health {ioc.get('DM:Health')}")
        assert severity == MAJOR, status
        assert status.startswith("AddUser failed: state_dir full: cannot write the registry"), status
        assert ioc.get("DM:Health") == "Error" and ioc.severity("DM:Health") == MAJOR
        assert ioc.get("ExperimentUsers").split(",") == users  # refused: nothing changed

        status, severity = ioc.command("CreateManual")
        print(f"CreateManual on a full state_dir: {status!r}, severity {severity}")
        assert severity == MAJOR and status.startswith("CreateManual failed: state_dir full"), status
        assert ioc.get("DM:Health") == "Error"
        assert ioc.get("ExperimentName") == NAME

        filler.unlink()
        status, severity = ioc.command("AddUser")
        assert severity == 0 and "d310013" in status, status
        assert ioc.get("DM:Health") == "OK"
        status, severity = ioc.command("CreateManual")  # a rerun completes what the full disk stopped
        assert severity == 0 and "Full" in status, status
        manual = ioc.get("ExperimentName")
        log = ioc.log()
        assert "Traceback" not in log and "internal error" not in log, log

    with IOC(config, tmp_path) as again:  # nothing lost: both experiments, the user added
        assert again.get("ExperimentName") == manual
        assert {NAME, manual} <= set(again.get("Experiments").splitlines())
        again.put("SelectName", NAME)
        status, severity = again.command("Select")
        assert severity == 0, status
        assert again.get("ExperimentUsers").split(",") == [*users, "d310013"]


def test_autosave_on_a_full_state_dir_is_said_once_and_again_only_after_a_success(config, tmp_path, tmpfs):
    state = tmpfs(tmp_path / "state", size=SMALL)
    autosave = state / "autosave.json"
    with IOC(config, tmp_path) as ioc:
        ioc.put("RefreshPeriod", 120.0)
        wait_for(lambda: saved(autosave, RefreshPeriod=120), what="autosave")
        filler = fill(state)

        ioc.put("RefreshPeriod", 130.0)
        status = status_saying(ioc, "autosave")
        print(f"autosave on a full state_dir: {status!r}")
        assert "state_dir full" in status and ioc.severity("Status") == MAJOR, status
        ioc.put("Manual:LastName", "Quiet")
        status, severity = ioc.command("Refresh")  # Status is the command's now
        assert severity < MAJOR and "autosave" not in status, status
        ioc.put("RefreshPeriod", 140.0)  # still failing: not said again
        beat = ioc.get("Heartbeat")  # two ticks (a second or more): autosave (every 0.5 s) has tried again
        wait_for(lambda: ioc.get("Heartbeat") >= beat + 2, what="two heartbeats")
        assert "autosave" not in ioc.get("Status")
        filler.unlink()
        wait_for(lambda: saved(autosave, RefreshPeriod=140, **{"Manual:LastName": "Quiet"}), what="autosave")
        assert "autosave" not in ioc.get("Status")
        log = ioc.log()
        assert log.count("failed: state_dir full") == 1 and "works again" in log, log

        filler = fill(state)  # full again after a success: said again
        ioc.put("RefreshPeriod", 150.0)
        status_saying(ioc, "autosave")
        assert "Traceback" not in ioc.log(), ioc.log()
        filler.unlink()
    assert saved(autosave, RefreshPeriod=150)  # written on the way out


def test_a_full_state_dir_while_daq_runs_is_said_and_no_file_is_lost_or_sent_twice(config, tmp_path, tmpfs):
    state = tmpfs(tmp_path / "state", size=SMALL)
    raw, data = tmp_path / "data" / NAME, tmp_path / "storage" / "2026-11" / NAME / "data"
    with IOC(config, tmp_path) as ioc:
        assert create_current(ioc)[1] == 0
        assert ioc.command("DaqStart")[1] == 0
        (raw / "a.h5").write_bytes(b"a")
        wait_for(lambda: ioc.get("Daq:FilesDone") == 1, timeout=15, what="a.h5 sent")
        filler = fill(state)
        (raw / "b.h5").write_bytes(b"b")  # copied (the storage has room), not recorded (the ledger has none)
        status = status_saying(ioc, "state_dir full")
        print(f"DaqStart on a full state_dir: {status!r}, DaqState {ioc.get('DaqState')}")
        assert ioc.get("DaqState") == "Error" and ioc.severity("Status") == MAJOR, status
        assert "internal error" not in status, status

        filler.unlink()
        wait_for(lambda: ioc.get("DaqState") == "Running", timeout=15, what="the transfer to recover")
        status, severity = ioc.command("DaqStop")
        assert severity == 0, status
        log = ioc.log()  # one line while it lasted (the commit is tried again twice a second), no traceback
        assert log.count("cannot write the transfer ledger") == 1 and "Traceback" not in log, log
        assert "the transfer ledger is written again" in log, log
        inodes = {p.name: p.stat().st_ino for p in data.iterdir()}
        assert sorted(inodes) == ["a.h5", "b.h5"]

    with IOC(config, tmp_path) as again:  # the ledger holds both: an upload sends nothing again
        status, severity = again.command("Upload")
        assert severity == 0, status
        summary = status_saying(again, "finished")
        assert "0 files" in summary and "(2 already there)" in summary, summary
    assert {p.name: p.stat().st_ino for p in data.iterdir()} == inodes


def test_an_ioc_started_on_a_full_state_dir_refuses_saying_so_and_starts_once_there_is_room(config, tmp_path, tmpfs):
    """SQLite cannot make a database's -shm on a full disk: the IOC cannot open its registry."""
    state = tmpfs(tmp_path / "state", size=SMALL)
    with IOC(config, tmp_path) as ioc:
        assert create_current(ioc)[1] == 0
    filler = fill(state)
    ioc = IOC(config, tmp_path)
    refused = subprocess.run([DMAGIC_IOC, "--config", str(ioc.config_path)], capture_output=True, text=True,
                             timeout=60, env=ioc.env)  # fmt: skip
    print(f"start on a full state_dir: exit {refused.returncode}, {refused.stderr.strip()!r}")
    assert refused.returncode != 0
    assert "cannot start: state_dir full: cannot open the registry" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    filler.unlink()
    with ioc:
        assert ioc.get("ExperimentName") == NAME


# ------------------------------------------------------------------ storage full


def test_a_full_storage_is_said_and_create_works_once_space_is_back(config, tmp_path, tmpfs):
    storage = tmpfs(tmp_path / "storage", size=SMALL)
    with IOC(config, tmp_path) as ioc:
        filler = fill(storage)
        status, severity = create_current(ioc)
        print(f"Create on a full storage: {status!r}, severity {severity}, DM:Health {ioc.get('DM:Health')}")
        assert severity == MAJOR, status
        assert "storage full" in status and "internal error" not in status, status
        assert ioc.get("DM:Health") == "Error" and ioc.severity("DM:Health") == MAJOR

        filler.unlink()
        status, severity = ioc.command("Create")
        assert severity == 0 and NAME in status, status
        assert ioc.get("DM:Health") == "OK"


def test_a_storage_full_during_daq_is_said_as_such_and_the_file_arrives_once_there_is_room(config, tmp_path, tmpfs):
    storage = tmpfs(tmp_path / "storage", size=SMALL)
    raw, data = tmp_path / "data" / NAME, storage / "2026-11" / NAME / "data"
    with IOC(config, tmp_path) as ioc:
        assert create_current(ioc)[1] == 0
        assert ioc.command("DaqStart")[1] == 0
        (raw / "a.h5").write_bytes(b"a" * 1000)
        wait_for(lambda: ioc.get("Daq:FilesDone") == 1, timeout=15, what="a.h5 sent")
        filler = fill(storage)
        scan = os.urandom(300_000)
        (raw / "scan1").mkdir()
        (raw / "scan1" / "b.h5").write_bytes(scan)

        status = status_saying(ioc, "storage full")
        print(f"a full storage while DAQ runs: {status!r}, DaqState {ioc.get('DaqState')}")
        assert status.startswith(f"storage full: cannot copy {raw / 'scan1' / 'b.h5'} to "), status
        assert ioc.get("DaqState") == "Error" and ioc.severity("DaqState") == MAJOR
        assert ioc.severity("Status") == MAJOR
        assert not (data / "scan1" / "b.h5").exists()

        filler.unlink()
        wait_for(lambda: ioc.get("Daq:FilesDone") == 2, timeout=30, what="b.h5 sent once there is room")
        wait_for(lambda: ioc.get("DaqState") == "Running", timeout=15, what="DaqState Running")
        assert (data / "scan1" / "b.h5").read_bytes() == scan
        assert not [path for path in data.rglob("*") if ".part-" in path.name]
        assert ioc.command("DaqStop")[1] == 0
        log = ioc.log()
        assert "Traceback" not in log and "storage full: cannot copy" in log, log
