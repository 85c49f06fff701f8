"""The walks of a large storage tree through the installed IOC: AddUser, RemoveUser and Delete of an experiment of
100,000 files answer at once, their walks go on in the background while other commands answer, each walk's end
is said on Status with its files and time; a walk cut by kill -9 is resumed at the next start and ends.

As root, with a throwaway account (tests/accounts.py), on the filesystem of /tmp. `pytest -s` prints the times.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm import acl

from ..accounts import as_user, needs_acl, open_folder, throwaway_user, unique_prefix
from ..helpers import wait_for
from .fixtures import IN_SECOND
from .harness import IOC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # 100,000 files made and removed on a loaded machine

NAME = "2026-11-DArcy-1013377"  # the beamtime at IN_SECOND
FILES, PER_FOLDER = 100_000, 1000
ENDED = re.compile(r": (\d+) files in ([\d.]+) s")


def fill(data: Path) -> list[Path]:
    """FILES empty files, PER_FOLDER to a folder, as a transfer leaves them."""
    files = []
    for index in range(FILES):
        folder = data / f"scan{index // PER_FOLDER:03d}"
        if index % PER_FOLDER == 0:
            folder.mkdir()
        files.append(folder / f"proj_{index % PER_FOLDER:04d}.h5")
        os.close(os.open(files[-1], os.O_CREAT | os.O_WRONLY, 0o644))
    return files


def with_entry(files: list[Path], uid: int) -> int:
    """How many of `files` have an ACL entry for `uid`."""
    return sum((acl.USER, uid) in acl.decode(os.getxattr(path, acl.ACCESS)) for path in files
               if acl.ACCESS in os.listxattr(path))  # fmt: skip


def timed_command(ioc: IOC, name: str) -> tuple[str, int, float]:
    started = time.perf_counter()
    status, severity = ioc.command(name)
    return status, severity, time.perf_counter() - started


def walk_end(ioc: IOC, start: str) -> tuple[int, float]:
    """Wait for the end of a walk on Status (its sentence starts with `start`): (its files, its seconds)."""
    said = wait_for(lambda: (status := ioc.get("Status")).startswith(start) and status, timeout=120,
                    what=f"Status to say: {start}...")  # fmt: skip
    found = ENDED.search(said)
    assert found and ioc.severity("Status") == 0, said
    return int(found[1]), float(found[2])


def logged_before(ioc: IOC, first: str, then: str) -> bool:
    """Whether the IOC's log says `first` on a line before the line that says `then`."""
    lines = ioc.log().splitlines()
    at = [next(i for i, line in enumerate(lines) if text in line) for text in (first, then)]
    return at[0] < at[1]


@pytest.fixture
def beamline(config, tmp_path):
    """A storage root every account can pass through, users' ACLs on (dm.posix.user_account), a throwaway
    account for badge 310099, and the experiment of the beamtime at IN_SECOND holding FILES files."""
    prefix = unique_prefix()
    with open_folder() as top, throwaway_user(f"{prefix}310099") as reader:
        for name in ("data", "storage"):
            (top / name).mkdir(mode=0o711)
        config["dm"].update(data_top_dir=str(top / "data"), storage_root=str(top / "storage"),
                            posix={"user_account": prefix + "{badge}"})  # fmt: skip
        with IOC(config, tmp_path) as ioc:
            ioc.put("TimeOffsetDays", IN_SECOND)
            ioc.command("Refresh")
            ioc.command("Create")  # its people have no account here: MINOR, named
            storage = top / "storage" / "2026-11" / NAME
            assert ioc.get("StorageDirectory") == str(storage)
            files = fill(storage / "data")
            yield ioc, reader, storage, files


@needs_acl
def test_add_remove_and_delete_answer_at_once_and_other_commands_answer_while_they_walk(beamline):
    ioc, reader, storage, files = beamline
    uid = pwd.getpwnam(reader).pw_uid
    ioc.put("Badges", "310099")
    status, severity, add_seconds = timed_command(ioc, "AddUser")
    assert severity == 0 and status == f"gave d310099 access to {NAME}; the ACLs of its files follow in the background"
    status, severity, refresh_seconds = timed_command(ioc, "Refresh")  # while the walk runs
    assert severity < 2 and status.startswith("proposal 1013377"), status  # MINOR: TimeOffsetDays is not 0
    walked, walk_seconds = walk_end(ioc, f"gave {reader} access to the files of {NAME}: ")
    assert walked == FILES + 1  # and the storage's marker
    assert logged_before(ioc, "Refresh: proposal", f"gave {reader} access to the files of {NAME}: ")
    assert add_seconds < walk_seconds  # the walk was not the command's
    assert with_entry(files, uid) == FILES
    assert as_user(reader, "cat", str(files[-1]))

    status, severity, remove_seconds = timed_command(ioc, "RemoveUser")
    assert severity == 0 and "the ACLs of its files follow in the background" in status, status
    assert not as_user(reader, "cat", str(files[-1]))  # the storage folder's entry went at once
    _, unwalk_seconds = walk_end(ioc, f"took the access of {reader} from the files of {NAME}: ")
    assert with_entry(files, uid) == 0

    ioc.put("DeleteConfirm", NAME)
    status, severity, delete_seconds = timed_command(ioc, "Delete")
    assert severity == 0 and f"storage {storage} (its files are removed in the background)" in status, status
    assert not storage.exists()
    removed, remove_walk_seconds = walk_end(ioc, f"removed the storage {storage} of deleted experiment {NAME}: ")
    assert removed == FILES and list(storage.parent.iterdir()) == []  # nothing set aside is left
    print(f"\n{FILES} files: AddUser put {add_seconds:.2f} s, its walk {walk_seconds:.1f} s; Refresh put during "
          f"the walk {refresh_seconds:.3f} s; RemoveUser put {remove_seconds:.2f} s, walk {unwalk_seconds:.1f} s; "
          f"Delete put {delete_seconds:.2f} s, removal {remove_walk_seconds:.1f} s")  # fmt: skip


@needs_acl
def test_a_walk_cut_by_kill_9_is_resumed_at_the_next_start_and_every_file_gets_its_entry(beamline, config, tmp_path):
    ioc, reader, storage, files = beamline
    uid = pwd.getpwnam(reader).pw_uid
    queue = tmp_path / "state" / "walks.json"
    ioc.put("Badges", "310099")
    status, severity = ioc.command("AddUser")
    assert "follow in the background" in status, status
    wait_for(lambda: queue.exists() and json.loads(queue.read_text())["walks"], interval=0.01, what="the walk queued")
    ioc.kill()
    [cut] = json.loads(queue.read_text())["walks"]  # still there: it had not ended
    assert (cut["action"], cut["experiment"]) == ("grant", NAME)
    before = with_entry(files, uid)
    assert before < FILES, "the walk ended before kill -9: nothing to resume"

    with IOC(config, tmp_path) as again:
        said = f"gave {reader} access to the files of {NAME}: "
        wait_for(lambda: f"resumed 1 walk of experiment storage: giving {reader} access" in again.log()
                 or said in again.get("Status"), timeout=60, what="the walk resumed")  # fmt: skip
        walked, seconds = walk_end(again, said)
        assert walked == FILES + 1
        assert with_entry(files, uid) == FILES
        assert json.loads(queue.read_text())["walks"] == []
    print(f"\nkill -9 after {before} of {FILES} files had their entry; resumed: {walked} files in {seconds:.1f} s")
