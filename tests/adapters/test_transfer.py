"""The built-in transfer engine: whole files only, resumable, errors shown and retried."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dmagic_ioc.adapters import transfer
from dmagic_ioc.adapters.transfer import PART_NAME, Ledger, LocalTransfer, Tree
from dmagic_ioc.ioc.model import Experiment, InputError

SETTLE = 0.3
POLL = 0.1
EXPERIMENT = Experiment(name="2026-11-Li-1012039")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll `condition` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tree_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if PART_NAME.match(p.name)]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "src": tmp_path / "data" / EXPERIMENT.name,
        "rec": tmp_path / "data" / f"{EXPERIMENT.name}_rec",
        "dest": tmp_path / "dm" / EXPERIMENT.name / "data",
        "analysis": tmp_path / "dm" / EXPERIMENT.name / "analysis",
        "ledger": tmp_path / "state" / "transfers.db",
    }


@pytest.fixture
def engine(paths: dict[str, Path]):
    engine = LocalTransfer(paths["ledger"], settle_time=SETTLE, workers=3, poll_interval=POLL)
    engine.retry_initial, engine.retry_max = 0.1, 0.3
    yield engine
    engine.close()


def sources(paths: dict[str, Path]) -> dict[str, str]:
    return {str(paths["src"]): str(paths["dest"]), str(paths["rec"]): str(paths["analysis"])}


def test_files_in_subfolders_arrive_identical_with_their_mtime(engine, paths):
    src = paths["src"]
    for i in range(30):
        write(src / f"scan{i % 3}" / "deep" / f"proj_{i:04d}.h5", os.urandom(1000 + i * 517))
    write(src / "top.txt", b"")
    old = time.time_ns() - 3_600_000_000_000
    os.utime(src / "top.txt", ns=(old, old))

    sentence = engine.start(EXPERIMENT, sources(paths), once=False)

    assert f"waiting for {paths['rec']} to appear" in sentence
    wait_for(lambda: engine.progress().files_done == 31, what="31 files sent")
    assert tree_files(paths["dest"]) == tree_files(src)
    assert (paths["dest"] / "top.txt").stat().st_mtime_ns == old
    progress = engine.progress()
    assert progress.state == "Running"
    assert progress.files_total == 31
    assert progress.bytes_done == sum(len(data) for data in tree_files(src).values())


def test_a_file_written_slowly_never_appears_partial(engine, paths):
    paths["src"].mkdir(parents=True)
    engine.start(EXPERIMENT, sources(paths), once=False)
    target = paths["src"] / "slow.h5"
    dest = paths["dest"] / "slow.h5"
    chunks = [os.urandom(50_000) for _ in range(20)]
    final = b"".join(chunks)
    seen_partial: list[int] = []
    writing = threading.Event()
    writing.set()

    def watch_destination() -> None:
        while writing.is_set():
            try:
                data = dest.read_bytes()
            except FileNotFoundError:
                continue
            if data != final:
                seen_partial.append(len(data))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_destination)
    watcher.start()
    try:
        with target.open("wb") as out:
            for chunk in chunks:  # 2 s of writing, pauses shorter than the settle time
                out.write(chunk)
                out.flush()
                time.sleep(0.1)
        wait_for(dest.exists, what="the slow file to arrive")
    finally:
        writing.clear()
        watcher.join()
    assert seen_partial == []
    assert dest.read_bytes() == final
    assert not part_files(paths["dest"])


def test_a_rec_folder_created_after_start_is_picked_up(engine, paths):
    write(paths["src"] / "raw.h5", b"raw")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: (paths["dest"] / "raw.h5").exists(), what="raw file")

    write(paths["rec"] / "recon" / "slice_0001.tiff", b"slice")

    wait_for(lambda: (paths["analysis"] / "recon" / "slice_0001.tiff").exists(), what="reconstruction")
    assert (paths["analysis"] / "recon" / "slice_0001.tiff").read_bytes() == b"slice"
    assert engine.progress().files_done == 2


def test_a_changed_file_is_sent_again(engine, paths):
    target = write(paths["src"] / "notes.txt", b"first")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: (paths["dest"] / "notes.txt").exists(), what="first version")

    target.write_bytes(b"second version")

    wait_for(lambda: (paths["dest"] / "notes.txt").read_bytes() == b"second version", what="second version")
    assert engine.progress().files_done == 1


def test_a_file_replaced_by_a_rename_is_sent_again(engine, paths):
    write(paths["src"] / "meta.json", b'{"v": 1}')
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: (paths["dest"] / "meta.json").exists(), what="first version")

    os.replace(write(paths["src"] / "meta.json.tmp", b'{"v": 2}'), paths["src"] / "meta.json")

    wait_for(lambda: (paths["dest"] / "meta.json").read_bytes() == b'{"v": 2}', what="second version")
    assert sorted(tree_files(paths["dest"])) == ["meta.json"]


def test_upload_ends_by_itself_with_a_summary(engine, paths):
    for i in range(5):
        write(paths["src"] / f"f{i}", b"x" * 200_000)

    sentence = engine.start(EXPERIMENT, sources(paths), once=True)

    assert "does not exist, skipped" in sentence
    wait_for(lambda: engine.progress().state == "Stopped", what="the upload to end")
    progress = engine.progress()
    assert progress.message.startswith(f"upload of {EXPERIMENT.name} finished: 5 files, 1.0 MB in ")
    assert (progress.files_done, progress.files_total, progress.percent) == (5, 5, 100.0)
    assert engine.resume() is None  # a finished upload is not resumed
    assert engine.stop() == "no transfer is running"


def upload(engine: LocalTransfer, paths: dict[str, Path]) -> str:
    """Run one upload to its end; return its summary."""
    engine.start(EXPERIMENT, sources(paths), once=True)
    wait_for(lambda: engine.progress().state == "Stopped", what="the upload to end")
    return engine.progress().message


def test_forget_after_the_destination_was_deleted_sends_every_file_again(engine, paths):
    expected = {f"scan/f{i}.h5": os.urandom(1000 + i) for i in range(12)}
    for rel, data in expected.items():
        write(paths["src"] / rel, data)
    assert " 12 files" in upload(engine, paths)
    shutil.rmtree(paths["dest"])  # Delete of the experiment removed its storage

    engine.forget(sources(paths))

    assert engine.ledger.sent(str(paths["src"]), str(paths["dest"])) == {}
    summary = upload(engine, paths)  # the re-created experiment
    assert " 12 files" in summary and "already there" not in summary
    assert tree_files(paths["dest"]) == expected


def test_forget_is_refused_while_a_transfer_of_those_sources_runs(engine, paths, tmp_path):
    write(paths["src"] / "a.h5", b"a")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.ledger.sent(str(paths["src"]), str(paths["dest"])), what="a.h5 recorded as sent")

    with pytest.raises(InputError, match="DaqStop"):
        engine.forget({str(paths["src"]): str(paths["dest"])})
    assert engine.ledger.sent(str(paths["src"]), str(paths["dest"])) != {}
    engine.forget({str(tmp_path / "other"): str(tmp_path / "elsewhere")})  # not running: allowed

    engine.stop()
    engine.forget(sources(paths))
    assert engine.ledger.sent(str(paths["src"]), str(paths["dest"])) == {}


def test_ledger_forget_drops_those_sources_only_committed_or_buffered(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.add("/raw/a", "f1", 1, 1, "/dm/a")
    ledger.add("/raw/b", "f1", 1, 1, "/dm/b")
    ledger.commit()
    ledger.add("/raw/a", "f2", 2, 2, "/dm/a")  # buffered, not committed yet

    assert ledger.forget({"/raw/a": "/dm/a"}) == 1
    ledger.commit()

    assert ledger.sent("/raw/a", "/dm/a") == {}
    assert ledger.sent("/raw/b", "/dm/b") == {"f1": (1, 1)}
    ledger.close()


def test_a_sent_file_missing_from_its_destination_is_sent_again_at_the_next_start(engine, paths):
    expected = {f"f{i}": os.urandom(500 + i) for i in range(5)}
    for rel, data in expected.items():
        write(paths["src"] / rel, data)
    upload(engine, paths)
    (paths["dest"] / "f3").unlink()  # removed behind the ledger's back, no forget

    summary = upload(engine, paths)

    assert " 1 files" in summary and "(4 already there)" in summary
    assert tree_files(paths["dest"]) == expected


def test_a_second_start_reports_the_running_transfer(engine, paths):
    paths["src"].mkdir(parents=True)
    engine.start(EXPERIMENT, sources(paths), once=False)

    assert "already running" in engine.start(EXPERIMENT, sources(paths), once=False)
    with pytest.raises(InputError, match="stop it"):
        engine.start(Experiment(name="2026-11-Other-1"), sources(paths), once=False)


def test_a_destination_inside_its_source_is_refused(engine, paths):
    with pytest.raises(InputError, match="inside"):
        engine.start(EXPERIMENT, {str(paths["src"]): str(paths["src"] / "copy")}, once=False)


def test_stop_abandons_copies_without_leaving_a_temporary_file(engine, paths, monkeypatch):
    write(paths["src"] / "big.h5", os.urandom(8 * 1024 * 1024))
    real_copy_file_range = os.copy_file_range

    def slow_copy_file_range(*args):
        time.sleep(0.02)
        return real_copy_file_range(*args)

    monkeypatch.setattr(transfer, "COPY_CHUNK", 64 * 1024)
    monkeypatch.setattr(os, "copy_file_range", slow_copy_file_range)
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: part_files(paths["dest"]) if paths["dest"].exists() else [], what="a copy under way")

    started = time.monotonic()
    sentence = engine.stop()

    assert time.monotonic() - started < 2.0
    assert sentence.startswith(f"transfer of {EXPERIMENT.name} stopped")
    assert part_files(paths["dest"]) == []
    assert not (paths["dest"] / "big.h5").exists()
    assert engine.progress().state == "Stopped"
    assert engine.resume() is None  # stop clears the running definition


def test_a_blocked_destination_shows_error_then_recovers(engine, paths):
    write(paths["src"] / "scan1" / "proj.h5", b"projection")
    write(paths["src"] / "ok.h5", b"fine")
    blocker = write(paths["dest"] / "scan1", b"a file where a folder should be")

    engine.start(EXPERIMENT, sources(paths), once=False)

    progress = wait_for(lambda: engine.progress() if engine.progress().state == "Error" else None, what="Error state")
    assert "scan1/proj.h5" in progress.message
    assert "File exists" in progress.message or "Not a directory" in progress.message
    wait_for(lambda: (paths["dest"] / "ok.h5").exists(), what="the other file to get through")

    blocker.unlink()

    wait_for(lambda: engine.progress().state == "Running", what="recovery")
    assert (paths["dest"] / "scan1" / "proj.h5").read_bytes() == b"projection"
    assert engine.progress().message == ""


def test_a_full_disk_shows_error_then_recovers(engine, paths, monkeypatch):
    write(paths["src"] / "proj.h5", b"projection")
    real_copy_data = transfer._copy_data
    disk_full = threading.Event()
    disk_full.set()

    def copy_data(*args):
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy_data(*args)

    monkeypatch.setattr(transfer, "_copy_data", copy_data)
    engine.start(EXPERIMENT, sources(paths), once=False)

    wait_for(lambda: engine.progress().state == "Error", what="Error state")
    message = engine.progress().message
    assert str(paths["src"] / "proj.h5") in message
    assert "No space left on device" in message
    assert part_files(paths["dest"]) == []

    disk_full.clear()

    wait_for(lambda: engine.progress().state == "Running", what="recovery")
    assert (paths["dest"] / "proj.h5").read_bytes() == b"projection"


def test_checksum_verification_copies_identically(paths):
    engine = LocalTransfer(paths["ledger"], settle_time=0.0, checksum=True, poll_interval=POLL)
    try:
        data = os.urandom(3 * transfer.BUFFER_SIZE + 123)
        write(paths["src"] / "big.h5", data)
        engine.start(EXPERIMENT, sources(paths), once=True)
        wait_for(lambda: engine.progress().state == "Stopped", what="the upload to end")
        assert (paths["dest"] / "big.h5").read_bytes() == data
    finally:
        engine.close()


def test_scan_lists_only_changed_folders(tmp_path):
    for i in range(3):
        write(tmp_path / f"d{i}" / "a", b"a")
    tree = Tree(str(tmp_path))
    found, removed = tree.poll()
    assert sorted(rel for rel, _, _ in found) == ["d0/a", "d1/a", "d2/a"]
    assert removed == []

    write(tmp_path / "d1" / "b", b"b")
    (tmp_path / "d2" / "a").unlink()
    found, removed = tree.poll()

    assert [rel for rel, _, _ in found] == ["d1/b"]
    assert removed == ["d2/a"]
    assert tree.poll() == ([], [])


def test_ledger_schema_is_versioned(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == transfer.SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


RUNNER = """
import sys, time, os
from pathlib import Path
from dmagic_ioc.adapters import transfer
from dmagic_ioc.ioc.model import Experiment

real_copy_data = transfer._copy_data
def slow_copy_data(*args):
    time.sleep(0.01)  # so that the kill lands mid-transfer
    return real_copy_data(*args)
transfer._copy_data = slow_copy_data

command, ledger, src, dest = sys.argv[1:]
engine = transfer.LocalTransfer(Path(ledger), settle_time=0.1, workers=4, poll_interval=0.1)
if command == "start":
    engine.start(Experiment(name="kill9"), {src: dest}, once=True)
else:
    assert engine.resume() is not None
while engine.progress().state != "Stopped":
    time.sleep(0.05)
engine.close()
"""


def test_kill_9_mid_transfer_then_resume_sends_every_file_exactly_once(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "ledger.db"
    expected = {}
    for i in range(400):
        data = os.urandom(2000 + 37 * i)
        expected[f"d{i % 7}/f{i:04d}.bin"] = data
        write(src / f"d{i % 7}" / f"f{i:04d}.bin", data)
    runner = write(tmp_path / "runner.py", RUNNER.encode())

    def run(command: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(runner), command, str(ledger), str(src), str(dest)])

    first = run("start")
    try:
        wait_for(lambda: dest.exists() and sum(1 for _ in dest.rglob("*.bin")) >= 100, what="100 files sent")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    sent_before = {str(p.relative_to(dest)): p.stat().st_ino for p in dest.rglob("*.bin")}
    assert 100 <= len(sent_before) < 400, "the kill should land mid-transfer"

    second = run("resume")
    assert second.wait(30) == 0

    assert tree_files(dest) == expected
    assert part_files(dest) == []
    not_resent = {
        str(p.relative_to(dest)): p.stat().st_ino
        for p in dest.rglob("*.bin")
        if str(p.relative_to(dest)) in sent_before
    }
    assert not_resent == sent_before, "a file sent before the kill was sent again"
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT relpath, COUNT(*) FROM files GROUP BY root, relpath").fetchall()
        assert sorted(relpath for relpath, _ in rows) == sorted(expected)
        assert all(count == 1 for _, count in rows)
        assert db.execute("SELECT COUNT(*) FROM running").fetchone()[0] == 0


def test_an_unreadable_folder_is_reported_and_does_not_block_the_others(tmp_path, monkeypatch):
    write(tmp_path / "locked" / "a", b"a")
    write(tmp_path / "open" / "b", b"b")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    tree = Tree(str(tmp_path))
    found, _ = tree.poll()
    assert [rel for rel, _, _ in found] == ["open/b"]
    assert tree.problems == {"locked": f"cannot read source folder {tmp_path / 'locked'}: Permission denied"}

    monkeypatch.setattr(os, "scandir", real_scandir)
    found, _ = tree.poll()

    assert [rel for rel, _, _ in found] == ["locked/a"]
    assert tree.problems == {}


def test_a_chunk_of_files_is_copied_with_one_flush_and_each_checked(tmp_path, monkeypatch):
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = {f"d/f{i}": os.urandom(100 + i) for i in range(6)}
    for rel, data in files.items():
        write(src / rel, data)
    expected = {rel: ((src / rel).stat().st_size, (src / rel).stat().st_mtime_ns) for rel in files}
    (src / "d/f5").unlink()  # vanished before its copy
    flushes, fsyncs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(transfer, "syncfs", lambda fd: flushes.append(fd))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    real_write_aside = transfer._write_aside

    def write_aside(source, *args):
        outcome = real_write_aside(source, *args)
        if source.endswith("f2"):  # rewritten after its copy, before its rename
            write(src / "d/f2", b"changed")
        return outcome

    monkeypatch.setattr(transfer, "_write_aside", write_aside)
    items = [(str(src / rel), str(dest / rel), expected[rel]) for rel in files]

    outcomes = [outcome for outcome, _ in transfer.copy_files(items)]

    assert outcomes == ["copied", "copied", "changed", "copied", "copied", "vanished"]
    if transfer._SYNCFS is not None:
        assert len(flushes) == 1 and fsyncs == []
    assert tree_files(dest) == {rel: files[rel] for rel in ("d/f0", "d/f1", "d/f3", "d/f4")}
    assert (dest / "d/f0").stat().st_mtime_ns == expected["d/f0"][1]
    assert part_files(dest) == []
