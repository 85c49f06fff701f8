"""State files that cannot be read: the installed IOC keeps them aside, says so (MAJOR), and keeps serving.

Each test damages a state file as a bad disk, a full disk or a careless hand would (garbage,
truncation, corrupt pages, 0 bytes, a registry lost beside full storage), starts the installed
`dmagic-ioc` on it, and checks: it starts, Status says what happened with MAJOR severity, the
original is kept aside byte for byte, and commands still work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..e2e.harness import IOC
from ..helpers import wait_for

pytestmark = pytest.mark.faults

MAJOR = 2


def started_status(ioc: IOC) -> tuple[str, int]:
    """Status once startup has reported (it says `started`), and its severity."""
    status = wait_for(lambda: (s := ioc.get("Status")) and "started" in s and s, what="the startup Status")
    return status, ioc.severity("Status")


def kept_copies(path: Path) -> list[Path]:
    """The copies of `path` kept aside (`name.corrupt-<time>`), their -wal/-shm left out."""
    return sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm")))


def still_serves(ioc: IOC) -> None:
    """Heartbeat ticks, a setting takes a write, and a command runs."""
    beat = ioc.get("Heartbeat")
    wait_for(lambda: ioc.get("Heartbeat") > beat, what="Heartbeat to tick")
    ioc.put("Manual:LastName", "Fault")
    assert ioc.get("Manual:LastName") == "Fault"
    status, severity = ioc.command("CreateManual")
    assert severity < MAJOR and "Fault" in status, status


# --------------------------------------------------------------------------- autosave.json


def saved_settings(config, tmp_path) -> Path:
    """Run the IOC once so it autosaves TimeOffsetDays 4 and RefreshPeriod 120; the file's path."""
    autosave = tmp_path / "state" / "autosave.json"
    with IOC(config, tmp_path) as ioc:
        ioc.put("TimeOffsetDays", 4.0)
        ioc.put("RefreshPeriod", 120.0)
        wait_for(lambda: autosave.exists() and json.loads(autosave.read_text()).get("RefreshPeriod") == 120,
                 what="autosave")  # fmt: skip
    return autosave


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not an object"])
def test_unreadable_autosave_is_kept_aside_never_overwritten(config, tmp_path, damage):
    autosave = saved_settings(config, tmp_path)
    whole = autosave.read_bytes()
    original = {
        "garbage": b"\x00\xffnot json at all\x1b[2J",
        "truncated": whole[: len(whole) // 2],
        "not an object": b'["TimeOffsetDays", 4]',
    }[damage]
    autosave.write_bytes(original)

    with IOC(config, tmp_path) as ioc:
        status, severity = started_status(ioc)
        (kept,) = kept_copies(autosave)
        assert severity == MAJOR, status
        assert "autosave" in status and kept.name in status, status
        assert kept.read_bytes() == original
        assert ioc.get("RefreshPeriod") == 0.0  # the config's value: nothing restored from the damaged file
        assert ioc.get("DM:Health") == "OK"  # autosave is the IOC's own, not DM's
        still_serves(ioc)
        wait_for(lambda: autosave.exists() and json.loads(autosave.read_text()).get("Manual:LastName") == "Fault",
                 what="autosave to start a new file")  # fmt: skip
    assert kept.read_bytes() == original
    with IOC(config, tmp_path) as again:  # the new file is read; no alarm
        status, severity = started_status(again)
        assert severity == 0, status
        assert again.get("Manual:LastName") == "Fault"
    assert kept_copies(autosave) == [kept]


def test_nonsense_saved_by_an_older_version_is_not_restored(config, tmp_path):
    """An autosave that holds what the checks refuse today (NaN, a period that spins, an enum index out of
    range): each value keeps its default, and the IOC serves and refreshes."""
    autosave = tmp_path / "state" / "autosave.json"
    autosave.parent.mkdir(parents=True, exist_ok=True)
    autosave.write_text('{"TimeOffsetDays": NaN, "RefreshPeriod": 1e-9, "EmailMode": 7, "Manual:GUP": -3, '
                        '"Manual:LastName": 12, "TagPrefix": "2bmb:TomoScan:"}')  # fmt: skip
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("TimeOffsetDays") == 0 and ioc.get("RefreshPeriod") == 0  # the config's refresh_period
        assert ioc.get("EmailMode") == "New users" and ioc.get("Manual:GUP") == 0
        assert ioc.get("Manual:LastName") == "" and ioc.get("TagPrefix") == "2bmb:TomoScan:"
        status, severity = ioc.command("Refresh")
        assert severity < MAJOR, status
        beat = ioc.get("Heartbeat")
        wait_for(lambda: ioc.get("Heartbeat") > beat, what="Heartbeat")
        assert "not restored" in ioc.log() and "Traceback" not in ioc.log()


# --------------------------------------------------------------------------- registry.sqlite


def registry_with_an_experiment(config, tmp_path) -> Path:
    """Run the IOC once and create a manual experiment; the registry's path (closed, no WAL left)."""
    with IOC(config, tmp_path) as ioc:
        ioc.put("Manual:LastName", "Before")
        status, severity = ioc.command("CreateManual")
        assert severity < MAJOR, status
    return tmp_path / "state" / "registry.sqlite"


def corrupt_pages(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xab" * (len(data) - 4096)  # the header stays; every other page is garbage
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", ["corrupt pages", "garbage", "0 bytes"])
def test_unreadable_registry_is_kept_aside_with_dm_health_error(config, tmp_path, damage):
    registry = registry_with_an_experiment(config, tmp_path)
    if damage == "corrupt pages":
        original = corrupt_pages(registry)
    else:
        original = b"" if damage == "0 bytes" else b"SQLite format 2\0" + b"\x13" * 5000
        registry.write_bytes(original)

    with IOC(config, tmp_path) as ioc:
        status, severity = started_status(ioc)
        (kept,) = kept_copies(registry)
        assert severity == MAJOR, status
        assert "registry" in status and kept.name in status and "could not be read" in status, status
        assert kept.read_bytes() == original
        assert ioc.get("DM:Health") == "Error" and ioc.severity("DM:Health") == MAJOR
        # The storage still holds the experiment the lost registry listed: said, not taken as "none".
        assert "lists no experiment" in status, status
        still_serves(ioc)
        assert ioc.get("DM:Health") == "Error"  # held until restart, whatever a later contact says
    assert kept.read_bytes() == original


def test_empty_registry_beside_storage_with_experiments_is_not_taken_as_none(config, tmp_path):
    experiment = Path(config["dm"]["storage_root"]) / "2026-11" / "2026-11-DArcy-1013377"
    (experiment / "data").mkdir(parents=True)
    (experiment / "data" / "scan_0001.h5").write_bytes(b"frames")

    with IOC(config, tmp_path) as ioc:  # a new registry: none in state_dir
        status, severity = started_status(ioc)
        assert severity == MAJOR, status
        assert "lists no experiment" in status and "2026-11/2026-11-DArcy-1013377" in status, status
        assert "backup" in status  # what to do
        assert ioc.get("DM:Health") == "OK"  # the registry itself reads fine
        still_serves(ioc)
    assert (experiment / "data" / "scan_0001.h5").read_bytes() == b"frames"
    assert kept_copies(tmp_path / "state" / "registry.sqlite") == []
    with IOC(config, tmp_path) as again:  # now it lists one: no alarm
        status, severity = started_status(again)
        assert severity == 0, status
