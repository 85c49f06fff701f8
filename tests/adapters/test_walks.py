"""The local DM backend's walks of a storage tree (ACLs below the storage folder, a deleted storage's removal):
in the command while short, else in the background, in order, said once at their end, kept in walks.json and
resumed after a restart.

Every DM username maps to the account `nobody` (dm.posix.user_account without `{badge}`): no root needed. A
budget of 0 s sends any walk of more than `TICK` files and folders to the background, whatever the machine's
speed; a gate holds the walk the worker runs until the test lets it go.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import threading
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm import acl, walk
from dmagic_ioc.adapters.dm.local import LocalDM
from dmagic_ioc.adapters.dm.marker import STORAGE_MARKER
from dmagic_ioc.adapters.dm.tree import TICK
from dmagic_ioc.adapters.dm.walks import StorageWalks
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.experiment import ExperimentUser
from dmagic_ioc.ioc.settings.preflight import acl_support_problem

from ..faults.test_storage_attacks import exchange, make_outside, snapshot
from ..helpers import wait_for
from .test_local_dm import NAME, experiment

FILES = 3 * TICK  # more than one tick of the walk: past a budget of 0 s
NOBODY = pwd.getpwnam("nobody").pw_uid
READER = ExperimentUser("d310001")


@pytest.fixture
def roots(tmp_path):
    if problem := acl_support_problem(tmp_path):
        pytest.skip(problem)
    roots = tmp_path / "gdata", tmp_path / "data"
    for root in roots:
        root.mkdir()
    return roots


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "state" / "registry.sqlite") as registry:
        yield registry


class Backend:
    """A LocalDM on `walks` (started, closed with the test), its experiment made with FILES files in data/."""

    def __init__(self, registry, roots, state: Path, budget: float):
        self.walks = StorageWalks(state / "walks.json", budget=budget)
        self.dm = LocalDM(registry, roots[0], roots[1], "localhost", None, user_account="nobody", walks=self.walks)
        self.storage = Path(self.dm.create_experiment(experiment())[0].storage_directory)

    def fill(self, files: int = FILES) -> list[Path]:
        paths = [self.storage / "data" / f"scan{i // 100}" / f"proj_{i:04d}.h5" for i in range(files)]
        for path in paths:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
        return paths

    def ended(self, count: int = 1) -> list:
        return wait_for(lambda: len(ended := self.walks.progress().ended) >= count and list(ended), timeout=30,
                        what=f"{count} walk(s) to end")  # fmt: skip


@pytest.fixture
def backend(registry, roots, tmp_path):
    made = Backend(registry, roots, tmp_path / "state", budget=0.0)
    yield made
    made.walks.close()


class Gate:
    """Holds each walk of `action` the worker thread starts until `release`; `held` is set once one waits."""

    def __init__(self, monkeypatch, action: str):
        self.held, self.go = threading.Event(), threading.Event()
        real = walk.Walk.walk

        def gated(this, fd, progress):
            if this.action == action and threading.current_thread().name == "walks":
                self.held.set()
                assert self.go.wait(30), "the gate was never released"
            return real(this, fd, progress)

        monkeypatch.setattr(walk.Walk, "walk", gated)

    def release(self) -> None:
        self.go.set()


def stopped_half_way(backend: Backend, gate: Gate) -> None:
    """The IOC stops while the worker's walk waits at the gate: it stops at its first tick, still queued."""
    assert gate.held.wait(30)
    stopping = threading.Thread(target=backend.walks.close)
    stopping.start()
    wait_for(lambda: backend.walks._closing, what="the stop")
    gate.release()
    stopping.join(30)
    assert len(json.loads(backend.walks.path.read_text())["walks"]) == 1


def entries(path: Path) -> dict:
    try:
        return acl.decode(os.getxattr(path, acl.ACCESS))
    except OSError:
        return {}


def test_a_short_walk_ends_in_the_command(registry, roots, tmp_path):
    """Fewer files than one tick: never past the budget, so the files have their entry when add_users returns."""
    backend = Backend(registry, roots, tmp_path / "state", budget=0.0)
    files = backend.fill(TICK // 4)
    assert backend.dm.add_users(NAME, [READER]) == ["d310001"]
    assert backend.walks.claim("AddUser") == 0
    assert all(entries(path)[(acl.USER, NOBODY)] == 0o4 for path in files)
    assert json.loads((tmp_path / "state" / "walks.json").read_text())["walks"] == []  # struck off
    assert backend.walks.progress().ended == ()  # the command said it all


def test_a_long_walk_goes_on_in_the_background_and_its_end_is_said_once(backend):
    files = backend.fill()
    assert backend.dm.add_users(NAME, [READER]) == ["d310001"]
    assert (acl.USER, NOBODY) in entries(backend.storage)  # the storage folder at once: access starts there
    assert backend.walks.claim("AddUser") == 1
    [end] = backend.ended()
    assert end.message.startswith(f"gave nobody access to the files of {NAME}: {FILES + 1} files in ")  # and the marker
    assert end.by == "AddUser" and not end.failed and not end.warning
    assert all(entries(path)[(acl.USER, NOBODY)] == 0o4 for path in files)
    assert backend.walks.progress().ended == (end,)  # said once: the supervisor counts by its number


def test_a_second_walk_of_a_tree_waits_for_the_first_and_progress_says_what_runs(backend, monkeypatch):
    files = backend.fill()
    gate = Gate(monkeypatch, walk.GRANT)
    backend.dm.add_users(NAME, [READER])
    assert gate.held.wait(30)
    assert backend.dm.remove_users(NAME, ["d310001"]) == ["d310001"]  # queued behind the grant
    assert (acl.USER, NOBODY) not in entries(backend.storage)  # access ends there at once
    progress = backend.walks.progress()
    assert progress.doing == f"giving nobody access to the files of {NAME}" and progress.waiting == 1
    assert progress.sentence == f"giving nobody access to the files of {NAME}: 0 files so far; 1 more waiting"
    gate.release()
    first, second = backend.ended(2)
    assert first.message.startswith("gave nobody access") and second.message.startswith("took the access of nobody")
    assert not any((acl.USER, NOBODY) in entries(path) for path in files)  # in that order
    assert backend.walks.progress().files_total == 0 and backend.walks.progress().doing == ""


def test_delete_stops_the_walks_of_its_storage_and_removes_it_in_the_background(backend, monkeypatch):
    backend.fill()
    gate = Gate(monkeypatch, walk.GRANT)
    backend.dm.add_users(NAME, [READER])
    assert gate.held.wait(30)
    said = backend.dm.delete_experiment(NAME)
    assert f"storage {backend.storage} (its files are removed in the background)" in said
    assert not backend.storage.exists() and backend.dm.get_experiment(NAME) is None
    backend.dm.create_experiment(experiment())  # the name is free at once
    gate.release()
    [end] = backend.ended()  # the grant stopped without a word
    assert end.message.startswith(f"removed the storage {backend.storage} of deleted experiment {NAME}: {FILES} files")
    assert sorted(path.name for path in backend.storage.parent.iterdir()) == [NAME]  # nothing set aside is left
    wait_for(lambda: json.loads(backend.walks.path.read_text())["walks"] == [], what="the queue emptied")


def test_a_walk_the_ioc_stopped_is_resumed_at_the_next_start(backend, registry, roots, monkeypatch):
    files = backend.fill()
    gate = Gate(monkeypatch, walk.GRANT)
    backend.dm.add_users(NAME, [READER])
    assert gate.held.wait(30)
    [saved] = json.loads(backend.walks.path.read_text())["walks"]  # written before it started, 0600
    assert (saved["action"], saved["experiment"], saved["entries"]) == ("grant", NAME, [[acl.USER, NOBODY, 0o5]])
    assert os.stat(backend.walks.path).st_mode & 0o777 == 0o600
    stopped_half_way(backend, gate)
    monkeypatch.undo()

    again = StorageWalks(backend.walks.path, budget=0.0)
    try:
        assert again.resume() == f"resumed 1 walk of experiment storage: giving nobody access to the files of {NAME}"
        [end] = wait_for(lambda: again.progress().ended, timeout=30, what="the resumed walk's end")
        assert end.message.startswith(f"gave nobody access to the files of {NAME}: {FILES + 1} files") and end.by == ""
        assert all(entries(path)[(acl.USER, NOBODY)] == 0o4 for path in files)
        assert again.resume() is None
    finally:
        again.close()


def test_a_storage_that_is_no_longer_the_one_create_made_is_left_alone(backend, monkeypatch):
    files = backend.fill()
    gate = Gate(monkeypatch, walk.GRANT)
    backend.dm.add_users(NAME, [READER])
    stopped_half_way(backend, gate)
    monkeypatch.undo()
    (backend.storage / STORAGE_MARKER).write_text(json.dumps({"experiment": NAME, "id": "made-by-someone-else"}))

    again = StorageWalks(backend.walks.path, budget=0.0)
    try:
        again.resume()
        [end] = wait_for(lambda: again.progress().ended, timeout=30, what="the walk's end")
        assert end.warning and "is no longer the storage Create made" in end.message
        assert sum((acl.USER, NOBODY) in entries(path) for path in files) <= TICK  # the first run's, no more
    finally:
        again.close()


def test_a_queue_that_cannot_be_read_is_kept_aside_and_said_as_a_failure(tmp_path):
    path = tmp_path / "walks.json"
    path.write_bytes(b'{"walks": [{"action": "chmod -R"}], "sizes": {}}')
    walks = StorageWalks(path)
    assert walks.resume() is None
    [end] = walks.progress().ended
    assert end.failed and "could not be read" in end.message and "not resumed" in end.message
    [aside] = tmp_path.glob("walks.json.corrupt-*")
    assert aside.read_bytes() == b'{"walks": [{"action": "chmod -R"}], "sizes": {}}'
    assert not path.exists()


def test_the_removal_of_a_deleted_storage_follows_no_link_planted_or_swapped_in(backend, tmp_path, monkeypatch):
    """Symlinks and hard links to files and folders outside are planted in the storage; while its removal
    runs, folders in it are swapped with symlinks to folders outside. Nothing outside changes."""
    outside_files, outside_folders = make_outside(tmp_path / "outside", "nobody")
    before = snapshot(tmp_path / "outside")
    data = backend.storage / "data"
    backend.fill()
    for i, (file, folder) in enumerate(zip(outside_files, outside_folders, strict=True)):
        (data / f"link-to-file-{i}").symlink_to(file)
        (data / f"link-to-folder-{i}").symlink_to(folder, target_is_directory=True)
        os.link(file, data / f"hard-link-{i}")
    gate = Gate(monkeypatch, walk.REMOVE)
    assert "its files are removed in the background" in backend.dm.delete_experiment(NAME)
    assert gate.held.wait(30)
    [aside] = backend.storage.parent.glob(f".{NAME}.deleted-*")
    victims = [path for path in (aside / "data").iterdir() if path.is_dir() and not path.is_symlink()][:3]
    pairs = [(victim, victim.with_name(f".swap-{victim.name}")) for victim in victims]
    for (_, link), folder in zip(pairs, outside_folders, strict=False):
        link.symlink_to(folder, target_is_directory=True)
    stop, swaps = threading.Event(), [0]

    def swap() -> None:
        while not stop.is_set():
            for victim, link in pairs:
                with contextlib.suppress(OSError):  # one of them removed already
                    exchange(victim, link)
                    swaps[0] += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    wait_for(lambda: swaps[0] > 0, what="the first swaps")
    gate.release()
    backend.ended()
    stop.set()
    swapper.join(30)
    assert snapshot(tmp_path / "outside") == before
