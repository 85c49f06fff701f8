"""state_dir through the installed IOC: one IOC at a time on it, and its files private whatever the umask.

A second `dmagic-ioc` on the same config refuses to start naming the first one's pid; kill -9 of the
first frees it. Under umask 000 every file the IOC writes in state_dir (registry, ledger, catalogue
queue, autosave, logs, the lock, SQLite's -wal and -shm) is 0600 and every folder 0700; files an
earlier version left readable are tightened at start, and nothing is changed through a symlink.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dmagic_ioc.ioc.statefiles import PrivateRotatingFileHandler, private_dir, private_file

from ..helpers import wait_for
from ..scicat_standin import ScicatStandIn
from .fixtures import IN_SECOND
from .harness import DMAGIC_IOC, IOC

pytestmark = pytest.mark.e2e

NAME = "2026-11-DArcy-1013377"


def modes(top: Path) -> dict[str, str]:
    """Every entry under `top` (itself as '.'), by path relative to it: its permission bits, octal."""
    found = {".": oct(stat.S_IMODE(top.lstat().st_mode))}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(top))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def not_private(top: Path) -> dict[str, str]:
    """The entries under `top` (symlinks left out) that are not 0700 folders or 0600 files."""
    wrong = {}
    for name, mode in modes(top).items():
        path = top / name
        if path.is_symlink():
            continue
        if mode != (oct(0o700) if path.is_dir() else oct(0o600)):
            wrong[name] = mode
    return wrong


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask set to `mask` (the IOC started meanwhile inherits it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def run(config_path: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([DMAGIC_IOC, "--config", str(config_path), *args], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


# ------------------------------------------------------------------ one IOC per state_dir


def test_a_second_ioc_on_the_same_state_dir_refuses_naming_the_first_pid_until_it_is_killed(config, tmp_path):
    first = IOC(config, tmp_path).start()
    try:
        lock = tmp_path / "state" / "lock"
        assert lock.read_text().strip() == str(first.process.pid)
        second = run(first.config_path, "--prefix", "second:", env=first.env)
        print(f"second IOC: exit {second.returncode}, said {second.stderr.strip()!r}")
        assert second.returncode != 0
        said = second.stderr.strip().splitlines()
        assert len(said) == 1 and f"pid {first.process.pid}" in said[0] and "in use" in said[0], said
        assert "Traceback" not in second.stderr
        # --check and --print-pvs only read: they run beside it
        assert run(first.config_path, "--check", env=first.env).returncode == 0
        assert run(first.config_path, "--print-pvs", env=first.env).returncode == 0
        first.put("Manual:LastName", "First")
        status, severity = first.command("CreateManual")  # the first one serves on, untouched
        assert severity == 0, status
    finally:
        first.kill()  # kill -9: no clean-up, the kernel frees the lock
    with IOC(config, tmp_path) as after:
        assert lock.read_text().strip() == str(after.process.pid)
        assert "First" in after.get("ExperimentName")


# ------------------------------------------------------------------ private files


@pytest.fixture
def standin():
    with ScicatStandIn() as running:
        yield running


def with_scicat(config: dict, tmp_path: Path, standin: ScicatStandIn) -> dict:
    credentials = tmp_path / "scicat.cred"
    credentials.write_text(f"{standin.username}|{standin.password}\n")
    credentials.chmod(0o600)
    config["scicat"] = {"enabled": True, "url": standin.url, "credentials": str(credentials),
                        "owner_group": "p{gup}", "creation_location": "APS/2-BM-A,B",
                        "contact_email": "2bm@aps.anl.gov"}  # fmt: skip
    return config


def test_every_state_file_is_0600_and_every_folder_0700_under_umask_000(config, tmp_path, standin):
    state = tmp_path / "state"
    ioc = IOC(with_scicat(config, tmp_path, standin), tmp_path)
    with umask(0):
        ioc.start()
    try:
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, severity = ioc.command("Create")  # the registry
        assert severity == 0, status
        raw = tmp_path / "data" / NAME
        assert ioc.command("DaqStart")[1] == 0  # the ledger
        (raw / "scan_0001.h5").write_bytes(b"frames")
        wait_for(lambda: ioc.get("Daq:FilesDone") == 1, timeout=15, what="the file sent")
        assert ioc.command("DaqStop")[1] == 0  # the catalogue queue
        wait_for(lambda: (state / "autosave.json").exists(), what="autosave")
        running = modes(state)
        print("state_dir under umask 000, IOC running:", running)
        assert {"registry.sqlite", "registry.sqlite-wal", "transfers.sqlite", "catalog.sqlite", "autosave.json",
                "lock", "logs", "logs/dmagic-ioc.log"} <= set(running), running  # fmt: skip
        assert not_private(state) == {}
    finally:
        ioc.stop()
    print("state_dir under umask 000, IOC stopped:", modes(state))
    assert not_private(state) == {}


def test_files_left_readable_are_tightened_at_start_and_no_symlink_is_followed(config, tmp_path):
    state = tmp_path / "state"
    with IOC(config, tmp_path) as ioc:
        ioc.put("Manual:LastName", "Before")
        assert ioc.command("CreateManual")[1] == 0
    outside = tmp_path / "outside.txt"
    outside.write_text("not the IOC's")
    outside.chmod(0o644)
    # What an earlier version under umask 022 left, and links planted where state files go.
    for path in (state, state / "logs"):
        path.chmod(0o755)
    for path in (state / "registry.sqlite", state / "lock", state / "logs" / "dmagic-ioc.log"):
        path.chmod(0o644)
    (state / "autosave.json.corrupt-20260101T000000").symlink_to(outside)
    (state / "logs" / "dmagic-ioc.log.1").symlink_to(outside)

    with IOC(config, tmp_path) as again:
        assert "Before" in again.get("ExperimentName")
        print("state_dir after a start on files left readable:", modes(state))
        assert not_private(state) == {}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644 and outside.read_text() == "not the IOC's"


def test_a_registry_that_is_a_symlink_is_not_opened(config, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    outside = tmp_path / "elsewhere.sqlite"
    with sqlite3.connect(outside) as db:
        db.execute("CREATE TABLE mine (x)")
    db.close()
    outside.chmod(0o644)
    before = outside.read_bytes()
    (state / "registry.sqlite").symlink_to(outside)
    ioc = IOC(config, tmp_path)
    result = run(ioc.config_path, env=ioc.env)
    assert result.returncode != 0
    assert "cannot open the registry" in result.stderr and "symbolic links" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert outside.read_bytes() == before and stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_the_helpers_make_files_and_folders_private_and_rotations_too(tmp_path):
    """In process: what the IOC's start and its log file use, under umask 000."""
    with umask(0):
        folder = private_dir(tmp_path / "made" / "logs")
        made = private_file(folder / "new.sqlite")
        handler = PrivateRotatingFileHandler(folder / "ioc.log", maxBytes=200, backupCount=2, encoding="utf-8")
    try:
        record = logging.LogRecord("test", logging.INFO, __file__, 1, "x" * 150, None, None)
        for _ in range(4):
            handler.emit(record)  # each record rolls the file over
    finally:
        handler.close()
    assert {p.name for p in folder.iterdir()} == {"new.sqlite", "ioc.log", "ioc.log.1", "ioc.log.2"}
    assert made.read_bytes() == b""
    assert not_private(folder) == {} and oct(stat.S_IMODE(folder.stat().st_mode)) == oct(0o700)
