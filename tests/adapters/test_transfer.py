"""The built-in transfer engine: whole files only, resumable, errors shown and retried."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm.marker import STORAGE_MARKER, write_storage_marker
from dmagic_ioc.adapters.transfer import bytecopy, copying, scan
from dmagic_ioc.adapters.transfer.copying import PART_NAME
from dmagic_ioc.adapters.transfer.files import QUEUED
from dmagic_ioc.adapters.transfer.ledger import SCHEMA_VERSION, Definition, Ledger, LedgerFull
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.adapters.transfer.scan import Tree
from dmagic_ioc.adapters.transfer.tracker import Tracker
from dmagic_ioc.ioc.domain.errors import DMError, InputError
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import RecentRate, TransferProgress, TransferState

from .. import helpers

SETTLE = 0.3
POLL = 0.1
EXPERIMENT = Experiment(name="2026-11-Li-1012039")
wait_for = partial(helpers.wait_for, interval=0.02)  # every 20 ms: the SIGKILL of a transfer must land mid-way


def errored(engine):
    """The engine's progress when it is in Error, else None (for wait_for)."""
    progress = engine.progress()
    return progress if progress.state == TransferState.ERROR else None


def tree_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if PART_NAME.match(p.name)]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_storage(storage: Path, experiment: str = EXPERIMENT.name, subdirs=("data", "analysis")) -> str:
    """What Create makes: the storage folder, its destination folders and its marker; returns the marker's id."""
    for subdir in subdirs:
        (storage / subdir).mkdir(parents=True, exist_ok=True)
    return write_storage_marker(storage, experiment)


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "top": tmp_path / "data",
        "src": tmp_path / "data" / EXPERIMENT.name,
        "rec": tmp_path / "data" / f"{EXPERIMENT.name}_rec",
        "storage": tmp_path / "dm" / EXPERIMENT.name,
        "dest": tmp_path / "dm" / EXPERIMENT.name / "data",
        "analysis": tmp_path / "dm" / EXPERIMENT.name / "analysis",
        "ledger": tmp_path / "state" / "transfers.db",
    }
    paths["top"].mkdir()
    make_storage(paths["storage"])
    return paths


@pytest.fixture
def engine(paths: dict[str, Path]):
    engine = LocalTransfer(paths["ledger"], settle_time=SETTLE, workers=3, poll_interval=POLL, source_top=paths["top"])
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
    assert progress.state == TransferState.RUNNING
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
    wait_for(lambda: engine.progress().state == TransferState.STOPPED, what="the upload to end")
    progress = engine.progress()
    assert progress.message.startswith(f"upload of {EXPERIMENT.name} finished: 5 files, 1.0 MB in ")
    assert (progress.files_done, progress.files_total, progress.percent) == (5, 5, 100.0)
    assert engine.resume() is None  # a finished upload is not resumed
    assert engine.stop() == "no transfer is running"


def upload(engine: LocalTransfer, paths: dict[str, Path]) -> str:
    """Run one upload to its end; return its summary."""
    engine.start(EXPERIMENT, sources(paths), once=True)
    wait_for(lambda: engine.progress().state == TransferState.STOPPED, what="the upload to end")
    return engine.progress().message


def test_forget_after_the_destination_was_deleted_sends_every_file_again(engine, paths):
    expected = {f"scan/f{i}.h5": os.urandom(1000 + i) for i in range(12)}
    for rel, data in expected.items():
        write(paths["src"] / rel, data)
    assert " 12 files" in upload(engine, paths)
    shutil.rmtree(paths["storage"])  # Delete of the experiment removed its storage

    engine.forget(sources(paths))
    make_storage(paths["storage"])  # Create made it again

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

    ledger.forget({"/raw/a": "/dm/a"})
    ledger.commit()

    assert ledger.sent("/raw/a", "/dm/a") == {}
    assert ledger.sent("/raw/b", "/dm/b") == {"f1": (1, 1)}
    ledger.close()


def stored_rows(path) -> int:
    """The rows the ledger's file holds, counted or not."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM files").fetchone()[0]


def test_ledger_forget_writes_one_row_and_the_pair_counts_again_after_it_and_after_a_restart(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    for i in range(30):
        ledger.add("/raw/a", f"f{i}", i, i, "/dm/a")
    ledger.add("/raw/b", "g", 1, 1, "/dm/b")
    ledger.commit()

    ledger.forget({"/raw/a": "/dm/a"})
    assert stored_rows(path) == 31  # nothing deleted inside the forget: its cost is not the files'
    assert ledger.sent("/raw/a", "/dm/a") == {} and ledger.sent_of("/raw/a", "/dm/a", ["f1"]) == {}
    assert ledger.sent_after("/raw/a", "/dm/a", "", 100) == []
    assert [row[0] for row in ledger.sent_since(0, "/dm")] == ["/dm/b/g"]
    ledger.close()

    ledger = Ledger(path)  # a restart: still forgotten
    assert ledger.sent("/raw/a", "/dm/a") == {} and ledger.sent("/raw/b", "/dm/b") == {"g": (1, 1)}
    ledger.add("/raw/a", "f1", 5, 5, "/dm/a")  # the re-created experiment sends it again
    ledger.commit()
    assert ledger.sent("/raw/a", "/dm/a") == {"f1": (5, 5)}
    assert [row[0] for row in ledger.sent_since(0, "/dm/a")] == ["/dm/a/f1"]
    assert stored_rows(path) == 2  # the commit removed the forgotten rows
    ledger.forget({"/raw/a": "/dm/a"})  # a second forget of the same pair
    assert ledger.sent("/raw/a", "/dm/a") == {}
    ledger.close()


def test_ledger_removes_forgotten_rows_a_chunk_at_each_commit(tmp_path, monkeypatch):
    path = tmp_path / "ledger.db"
    monkeypatch.setattr(Ledger, "PURGE_CHUNK", 4)
    ledger = Ledger(path)
    for i in range(10):
        ledger.add("/raw/a", f"f{i}", i, i, "/dm/a")
    ledger.commit()
    ledger.forget({"/raw/a": "/dm/a"})

    counts = []
    for i in range(4):
        ledger.add("/raw/c", f"n{i}", i, i, "/dm/c")
        ledger.commit()
        counts.append(stored_rows(path))

    assert counts == [7, 4, 3, 4]  # 10 forgotten: 4, 4, then the last 2; each commit adds its own row
    assert ledger.sent("/raw/a", "/dm/a") == {} and len(ledger.sent("/raw/c", "/dm/c")) == 4
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

    monkeypatch.setattr(bytecopy, "COPY_CHUNK", 64 * 1024)
    monkeypatch.setattr(os, "copy_file_range", slow_copy_file_range)
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: part_files(paths["dest"]) if paths["dest"].exists() else [], what="a copy under way")

    started = time.monotonic()
    sentence = engine.stop()

    assert time.monotonic() - started < 2.0
    assert sentence.startswith(f"transfer of {EXPERIMENT.name} stopped")
    assert part_files(paths["dest"]) == []
    assert not (paths["dest"] / "big.h5").exists()
    assert engine.progress().state == TransferState.STOPPED
    assert engine.resume() is None  # stop clears the running definition


def test_a_blocked_destination_shows_error_then_recovers(engine, paths):
    write(paths["src"] / "scan1" / "proj.h5", b"projection")
    write(paths["src"] / "ok.h5", b"fine")
    blocker = write(paths["dest"] / "scan1", b"a file where a folder should be")

    engine.start(EXPERIMENT, sources(paths), once=False)

    progress = wait_for(
        lambda: engine.progress() if engine.progress().state == TransferState.ERROR else None, what="Error state"
    )
    assert "scan1/proj.h5" in progress.message
    assert "File exists" in progress.message or "Not a directory" in progress.message
    wait_for(lambda: (paths["dest"] / "ok.h5").exists(), what="the other file to get through")

    blocker.unlink()

    wait_for(lambda: engine.progress().state == TransferState.RUNNING, what="recovery")
    assert (paths["dest"] / "scan1" / "proj.h5").read_bytes() == b"projection"
    assert engine.progress().message == ""


def test_a_full_disk_shows_error_then_recovers(engine, paths, monkeypatch):
    write(paths["src"] / "proj.h5", b"projection")
    real_copy_data = copying.copy_data
    disk_full = threading.Event()
    disk_full.set()

    def copy_data(*args):
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy_data(*args)

    monkeypatch.setattr(copying, "copy_data", copy_data)
    engine.start(EXPERIMENT, sources(paths), once=False)

    wait_for(lambda: engine.progress().state == TransferState.ERROR, what="Error state")
    message = engine.progress().message
    assert str(paths["src"] / "proj.h5") in message
    assert "No space left on device" in message
    assert part_files(paths["dest"]) == []

    disk_full.clear()

    wait_for(lambda: engine.progress().state == TransferState.RUNNING, what="recovery")
    assert (paths["dest"] / "proj.h5").read_bytes() == b"projection"


def test_checksum_verification_copies_identically(paths):
    engine = LocalTransfer(paths["ledger"], settle_time=0.0, checksum=True, poll_interval=POLL, source_top=paths["top"])
    try:
        data = os.urandom(3 * bytecopy.BUFFER_SIZE + 123)
        write(paths["src"] / "big.h5", data)
        engine.start(EXPERIMENT, sources(paths), once=True)
        wait_for(lambda: engine.progress().state == TransferState.STOPPED, what="the upload to end")
        assert (paths["dest"] / "big.h5").read_bytes() == data
    finally:
        engine.close()


@pytest.mark.parametrize("checksum", [True, False])
def test_the_files_sent_carry_the_checksum_their_copy_was_verified_against_with_dm_checksum(paths, checksum):
    """The dataset's checksums come from the transfer: the source's blake2b, hashed once, as it was copied."""
    engine = LocalTransfer(paths["ledger"], settle_time=0.0, checksum=checksum, poll_interval=POLL,
                           source_top=paths["top"])  # fmt: skip
    try:
        write(paths["src"] / "scan" / "a.h5", b"frames")
        write(paths["rec"] / "r.tiff", b"recon")
        engine.start(EXPERIMENT, sources(paths), once=True)
        wait_for(lambda: engine.progress().state == TransferState.STOPPED, what="the upload to end")
        files = engine.sent_since(0.0, str(paths["storage"]))
        sent = {os.path.relpath(f.path, paths["storage"]): f.checksum for f in files}
        expected = {"data/scan/a.h5": b"frames", "analysis/r.tiff": b"recon"}
        assert sent == {rel: "blake2b:" + hashlib.blake2b(data).hexdigest() if checksum else ""
                        for rel, data in expected.items()}  # fmt: skip
    finally:
        engine.close()


# ------------------------------------------------------------------ progress by bytes


def test_the_progress_shows_the_bytes_of_a_big_file_while_it_is_copied(engine, paths, monkeypatch):
    """One big file among four small ones: Bytes rises during its copy, Rate is not 0 and Percent is by
    bytes (it showed 80 %, the bytes of the small files and a rate of 0 for the whole copy, then 100).
    The copy waits at each quarter of the file until the progress has shown it: nothing depends on timing."""
    old = time.time() - 3600  # long settled: all five are ready at the first look
    for i in range(4):
        os.utime(write(paths["src"] / f"small_{i}.h5", os.urandom(1000)), (old, old))
    size = 32 * 1024 * 1024
    with (paths["src"] / "big.h5").open("wb") as big:
        big.truncate(size)  # sparse: made at once
    os.utime(paths["src"] / "big.h5", (old, old))
    marks = [size // 4, size // 2, 3 * size // 4]
    shown = {mark: threading.Event() for mark in marks}
    real_copy_file_range = os.copy_file_range

    def copy_by_quarters(src_fd, dst_fd, count, src_offset, dst_offset):
        for mark in marks:
            if src_offset < mark:
                count = min(count, mark - src_offset)
                break
            shown[mark].wait(60)
        return real_copy_file_range(src_fd, dst_fd, count, src_offset, dst_offset)

    monkeypatch.setattr(os, "copy_file_range", copy_by_quarters)
    engine.start(EXPERIMENT, sources(paths), once=True)
    readings = []
    for mark in marks:
        readings.append(wait_for(lambda mark=mark: (p := engine.progress()).bytes_done >= mark and p,
                                 timeout=60, what=f"Bytes to show {mark} bytes of big.h5"))  # fmt: skip
        assert not (paths["dest"] / "big.h5").exists()
        shown[mark].set()

    total = size + 4000
    for reading in readings:
        assert reading.state == TransferState.RUNNING and reading.files_done <= 4
        assert reading.bytes_total == total
        assert 0 < reading.bytes_done < total
        assert reading.percent == pytest.approx(100 * reading.bytes_done / total)
        assert reading.rate_mb_s > 0
    assert readings[0].bytes_done < readings[1].bytes_done < readings[2].bytes_done
    assert readings[0].percent < readings[1].percent < readings[2].percent < 80

    done = wait_for(lambda: (p := engine.progress()).state == TransferState.STOPPED and p, timeout=60,
                    what="the upload to end")  # fmt: skip
    assert (done.files_done, done.bytes_done, done.bytes_total, done.percent) == (5, total, total, 100.0)
    assert (paths["dest"] / "big.h5").stat().st_size == size


def test_a_file_still_being_written_is_not_in_the_percent_until_it_is_ready(paths):
    """During DAQ Percent is the share of the files ready to send that is sent: a file the detector is
    still writing does not pull it down (nor grow the total) until it has settled."""
    engine = LocalTransfer(paths["ledger"], settle_time=60.0, poll_interval=POLL, source_top=paths["top"])
    try:
        old = time.time() - 3600
        os.utime(write(paths["src"] / "first.h5", b"1" * 1000), (old, old))
        engine.start(EXPERIMENT, sources(paths), once=False)
        wait_for(lambda: engine.progress().files_done == 1, what="first.h5 sent")

        write(paths["src"] / "growing.h5", b"2" * 3000)  # just written: settles after 60 s unchanged
        seen = wait_for(lambda: (p := engine.progress()).files_total == 2 and p, what="growing.h5 seen")
        assert (seen.files_done, seen.bytes_done, seen.bytes_total, seen.percent) == (1, 1000, 1000, 100.0)

        engine.settle_time = 0.0  # it is whole: ready at the next look
        sent = wait_for(lambda: (p := engine.progress()).files_done == 2 and p, what="growing.h5 sent")
        assert (sent.bytes_done, sent.bytes_total, sent.percent) == (4000, 4000, 100.0)
    finally:
        engine.close()


def test_an_upload_with_no_room_for_its_ledger_waits_saying_so_once_then_ends(engine, paths, monkeypatch, caplog):
    """state_dir full: the ledger's rows wait in memory, DaqState shows it (one log line, no traceback),
    and the upload ends only once they are recorded."""
    for i in range(3):
        write(paths["src"] / f"f{i}.h5", b"x" * 1000)
    real_commit, full, refused = Ledger.commit, threading.Event(), []
    full.set()

    def commit(ledger):
        if full.is_set() and ledger.buffered():
            refused.append(ledger.buffered())
            raise LedgerFull("state_dir full (database or disk is full)")
        return real_commit(ledger)

    monkeypatch.setattr(Ledger, "commit", commit)
    caplog.set_level(logging.INFO, logger="dmagic_ioc.adapters.transfer")
    engine.start(EXPERIMENT, sources(paths), once=True)

    progress = wait_for(lambda: errored(engine), what="the ledger error")
    assert progress.message.startswith(f"cannot write the transfer ledger {paths['ledger']}: state_dir full")
    wait_for(lambda: engine.progress().files_done == 3 and len(refused) >= 3, what="three files, three commits")
    assert engine.progress().state == TransferState.ERROR  # not finished: the files are not recorded

    full.clear()
    done = wait_for(lambda: (p := engine.progress()).state == TransferState.STOPPED and p, what="the end")
    assert "finished: 3 files" in done.message
    assert caplog.text.count("cannot write the transfer ledger") == 1 and "Traceback" not in caplog.text
    assert "the transfer ledger is written again" in caplog.text
    engine.close()
    ledger = Ledger(paths["ledger"])
    assert ledger.sent(str(paths["src"]), str(paths["dest"])).keys() == {"f0.h5", "f1.h5", "f2.h5"}
    ledger.close()


def test_the_rate_is_the_bytes_of_the_last_seconds():
    rate = RecentRate(window=5.0, spacing=0.25)
    assert rate.add(0, 100.0) == 0.0
    assert rate.add(10e6, 102.0) == pytest.approx(5.0)  # 10 MB in 2 s
    assert rate.add(20e6, 104.0) == pytest.approx(5.0)
    assert rate.add(20e6, 108.0) == pytest.approx(10 / 6)  # since 102 s, the last sample 5 s old or more
    assert rate.add(20e6, 120.0) == 0.0  # nothing for the last 10 s
    assert rate.add(5e6, 121.0) == 0.0  # a new count: starts over
    assert rate.add(9e6, 122.0) == pytest.approx(4.0)


def test_percent_is_by_bytes_where_the_total_is_known_else_by_files():
    assert TransferProgress(files_done=4, files_total=5, bytes_done=6e8, bytes_total=1.5e9 + 4e6).percent < 41
    assert TransferProgress(files_done=4, files_total=5, bytes_done=6e8).percent == 80.0
    assert TransferProgress(bytes_done=2e9, bytes_total=1e9).percent == 100.0
    assert TransferProgress().percent == 0.0


def test_copy_steps_take_about_a_quarter_second_whatever_the_disk():
    step = bytecopy.FIRST_COPY_STEP
    assert bytecopy._next_step(step, 0.01) == 2 * step  # fast disk: fewer, larger calls
    assert bytecopy._next_step(bytecopy.COPY_CHUNK, 0.01) == bytecopy.COPY_CHUNK
    assert bytecopy._next_step(step, 0.1) == step
    assert bytecopy._next_step(step, 2.0) == step // 2  # slow disk: progress still shown several times a second
    assert bytecopy._next_step(bytecopy.MIN_COPY_STEP, 2.0) == bytecopy.MIN_COPY_STEP


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
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


RUNNER = """
import sys, time, os
from pathlib import Path
from dmagic_ioc.adapters.transfer import copying
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import RecentRate, TransferProgress, TransferState

real_copy_data = copying.copy_data
def slow_copy_data(*args):
    time.sleep(0.01)  # so that the kill lands mid-transfer
    return real_copy_data(*args)
copying.copy_data = slow_copy_data

command, ledger, src, dest = sys.argv[1:]
engine = LocalTransfer(Path(ledger), settle_time=0.1, workers=4, poll_interval=0.1)
if command == "start":
    engine.start(Experiment(name="kill9"), {src: dest}, once=True)
else:
    assert engine.resume() is not None
while engine.progress().state != TransferState.STOPPED:
    time.sleep(0.05)
engine.close()
"""


def test_kill_9_mid_transfer_then_resume_sends_every_file_exactly_once(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "ledger.db"
    make_storage(tmp_path, "kill9", subdirs=("dest",))
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
        assert sorted(relpath.decode() for relpath, _ in rows) == sorted(expected)
        assert all(count == 1 for _, count in rows)
        assert db.execute("SELECT COUNT(*) FROM running").fetchone()[0] == 0


def test_an_unreadable_folder_is_reported_and_does_not_block_the_others(tmp_path, monkeypatch):
    write(tmp_path / "locked" / "a", b"a")
    write(tmp_path / "open" / "b", b"b")
    real_scandir = os.scandir

    def scandir(fd):  # the scan lists folders through descriptors; as root, a chmod would not stop it
        if os.readlink(f"/proc/self/fd/{fd}").endswith("locked"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_scandir(fd)

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
    dest.mkdir()
    files = {f"d/f{i}": os.urandom(100 + i) for i in range(6)}
    for rel, data in files.items():
        write(src / rel, data)
    expected = {rel: ((src / rel).stat().st_size, (src / rel).stat().st_mtime_ns) for rel in files}
    (src / "d/f5").unlink()  # vanished before its copy
    flushes, fsyncs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(copying, "syncfs", lambda fd: flushes.append(fd))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    real_write_aside = copying._write_aside

    def write_aside(sources, dests, rel, *args):
        outcome = real_write_aside(sources, dests, rel, *args)
        if rel.endswith("f2"):  # rewritten after its copy, before its rename
            write(src / "d/f2", b"changed")
        return outcome

    monkeypatch.setattr(copying, "_write_aside", write_aside)
    items = [(rel, expected[rel]) for rel in files]

    outcomes = [outcome for outcome, _ in copying.copy_files(str(src), str(dest), items)]

    assert outcomes == ["copied", "copied", "changed", "copied", "copied", "vanished"]
    if bytecopy.SYNCFS_WORKS:
        assert len(flushes) == 1 and fsyncs == []
    assert tree_files(dest) == {rel: files[rel] for rel in ("d/f0", "d/f1", "d/f3", "d/f4")}
    assert (dest / "d/f0").stat().st_mtime_ns == expected["d/f0"][1]
    assert part_files(dest) == []


def test_a_fifo_renamed_over_the_temporary_copy_neither_blocks_the_copy_nor_lands(tmp_path, monkeypatch):
    """Whoever may write the storage renames a FIFO over `.NAME.part-XXXXXXXX` between its write and its
    checksum: the copy is checked through the descriptor that wrote it (no name is opened again, so
    nothing blocks) and the replaced name is not renamed into place; the retry copies the file."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    dest.mkdir()
    data = os.urandom(bytecopy.BUFFER_SIZE + 7)
    st = write(src / "proj.h5", data).stat()
    real_copy_data = copying.copy_data
    planted = []

    def copy_data(*args):
        result = real_copy_data(*args)
        if not planted:
            (part,) = part_files(dest)
            os.mkfifo(tmp_path / "fifo")
            os.rename(tmp_path / "fifo", part)
            planted.append(part)
        return result

    monkeypatch.setattr(copying, "copy_data", copy_data)
    items = [("proj.h5", (st.st_size, st.st_mtime_ns))]
    outcomes = []
    worker = threading.Thread(
        target=lambda: outcomes.extend(copying.copy_files(str(src), str(dest), items, checksum=True)), daemon=True
    )
    worker.start()
    worker.join(60)  # a copy that opens the FIFO by name would wait for a writer for ever

    assert not worker.is_alive(), "the copy blocked on the FIFO renamed over its temporary file"
    ((outcome, reason),) = outcomes
    assert outcome == "failed" and "temporary copy" in reason and "was replaced: not renamed" in reason
    assert not (dest / "proj.h5").exists() and part_files(dest) == []
    assert copying.copy_files(str(src), str(dest), items, checksum=True) == [("copied", "")]
    assert (dest / "proj.h5").read_bytes() == data


# ------------------------------------------------------------------ confinement to the source folders


def outside_secret(tmp_path: Path) -> Path:
    """A file outside data_top_dir that no transfer may read."""
    return write(tmp_path / "etc" / "shadow", b"root:$6$secret")


@pytest.mark.parametrize("once", [True, False])
def test_a_source_folder_that_is_a_symlink_is_refused_and_nothing_is_read(engine, paths, tmp_path, once):
    secret = outside_secret(tmp_path)
    paths["rec"].symlink_to(secret.parent, target_is_directory=True)  # ln -s /etc {DataDirectory}_rec
    write(paths["src"] / "raw.h5", b"raw")

    with pytest.raises(InputError, match=f"source folder {paths['rec']} is reached through a symbolic link: refused"):
        engine.start(EXPERIMENT, sources(paths), once=once)

    assert tree_files(paths["storage"] / "data") == {} and tree_files(paths["analysis"]) == {}
    assert engine.progress().state == TransferState.STOPPED and engine.resume() is None


def test_a_source_folder_reached_through_a_symlinked_folder_is_refused(engine, paths, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / EXPERIMENT.name / "a.h5", b"a")
    (paths["top"] / "via").symlink_to(elsewhere, target_is_directory=True)
    root = paths["top"] / "via" / EXPERIMENT.name

    with pytest.raises(InputError, match=f"{root} is reached through a symbolic link \\({paths['top'] / 'via'} is one"):
        engine.start(EXPERIMENT, {str(root): str(paths["dest"])}, once=True)


@pytest.mark.parametrize("root", ["elsewhere", "data/../elsewhere"])
def test_a_source_folder_outside_data_top_dir_is_refused(engine, paths, tmp_path, root):
    write(tmp_path / "elsewhere" / "a.h5", b"a")

    with pytest.raises(InputError, match="is not inside dm.data_top_dir"):
        engine.start(EXPERIMENT, {str(tmp_path / root): str(paths["dest"])}, once=True)
    assert tree_files(paths["dest"]) == {}


def test_symlinks_and_special_files_inside_are_not_followed_and_the_summary_says_so(engine, paths, tmp_path, caplog):
    secret = outside_secret(tmp_path)
    write(paths["src"] / "scan1" / "proj.h5", b"proj")
    (paths["src"] / "scan1" / "shadow").symlink_to(secret)
    (paths["src"] / "etc").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(paths["src"] / "pipe")

    summary = upload(engine, paths)

    assert tree_files(paths["dest"]) == {"scan1/proj.h5": b"proj"}
    assert not (paths["dest"] / "etc").exists() and not (paths["dest"] / "scan1" / "shadow").exists()
    assert " 1 files" in summary and "; 3 not followed (symbolic links, special files): " in summary
    assert f"{EXPERIMENT.name}/scan1/shadow" in summary
    assert "scan1/shadow is a symbolic link: not followed" in caplog.text
    assert "pipe is not a regular file: not followed" in caplog.text


def test_a_folder_or_file_swapped_for_a_symlink_before_its_copy_is_not_followed(tmp_path):
    """The race a path-based copy loses: the scan saw real files; by the copy, a symlink stands in their place,
    pointing at files forged with the same size and mtime."""
    src, dest, outside = tmp_path / "src", tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    expected = {}
    for rel in ("scan/f.h5", "g.h5"):
        st = write(src / rel, b"x" * 100).stat()
        expected[rel] = (st.st_size, st.st_mtime_ns)
        forged = write(outside / Path(rel).name, b"y" * 100)
        os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(src / "scan")
    (src / "scan").symlink_to(outside, target_is_directory=True)
    (src / "g.h5").unlink()
    (src / "g.h5").symlink_to(outside / "g.h5")

    outcomes = copying.copy_files(str(src), str(dest), list(expected.items()))

    assert outcomes == [("vanished", ""), ("vanished", "")]
    assert tree_files(dest) == {}


@pytest.mark.parametrize("source_mode, copy_mode", [(0o4755, 0o755), (0o2750, 0o750), (0o1777, 0o777), (0o7640, 0o640)])
def test_a_copy_has_no_setuid_setgid_or_sticky_bit(tmp_path, source_mode, copy_mode):
    """Whoever may write a detector folder makes `tool` setuid: its copy in storage must not run as its owner."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    dest.mkdir()
    tool = write(src / "tool", b"#!/bin/sh\nid\n")
    tool.chmod(source_mode)
    assert stat.S_IMODE(tool.stat().st_mode) == source_mode

    assert copying.copy_files(str(src), str(dest), [("tool", (tool.stat().st_size, tool.stat().st_mtime_ns))]) == [
        ("copied", "")
    ]
    assert stat.S_IMODE((dest / "tool").stat().st_mode) == copy_mode


def test_the_engine_copies_a_setuid_program_without_its_setuid_bit(engine, paths):
    tool = write(paths["src"] / "bin" / "tool", b"\x7fELF")
    tool.chmod(0o6755)
    assert "finished" in upload(engine, paths)
    assert stat.S_IMODE((paths["dest"] / "bin" / "tool").stat().st_mode) == 0o755


def test_the_scan_drops_a_folder_swapped_for_a_symlink_and_does_not_follow_it(tmp_path):
    root = tmp_path / "src"
    write(root / "scan" / "a.h5", b"a")
    secret = outside_secret(tmp_path)
    tree = Tree(str(root), str(tmp_path))
    assert [rel for rel, _, _ in tree.poll()[0]] == ["scan/a.h5"]

    shutil.rmtree(root / "scan")
    (root / "scan").symlink_to(secret.parent, target_is_directory=True)
    found, removed = tree.poll()

    assert (found, removed) == ([], ["scan/a.h5"])
    assert tree.skipped == {"scan": "a symbolic link"}
    (root / "link").symlink_to(root / "scan")
    tree.poll()
    assert tree.skipped == {"scan": "a symbolic link", "link": "a symbolic link"}


def test_a_rec_folder_that_appears_as_a_symlink_is_an_error_and_is_not_read(engine, paths, tmp_path):
    write(paths["src"] / "raw.h5", b"raw")
    engine.start(EXPERIMENT, sources(paths), once=False)  # _rec is not there yet: the transfer waits for it
    wait_for(lambda: (paths["dest"] / "raw.h5").exists(), what="the raw file")

    paths["rec"].symlink_to(outside_secret(tmp_path).parent, target_is_directory=True)

    progress = wait_for(
        lambda: engine.progress() if engine.progress().state == TransferState.ERROR else None, what="Error"
    )
    assert f"source folder {paths['rec']} refused: {paths['rec']} is a symbolic link, not followed" in progress.message
    paths["rec"].unlink()
    write(paths["rec"] / "slice.tiff", b"slice")
    wait_for(lambda: (paths["analysis"] / "slice.tiff").exists(), what="the real _rec folder's file")
    assert tree_files(paths["analysis"]) == {"slice.tiff": b"slice"}
    wait_for(lambda: engine.progress().state == TransferState.RUNNING, what="recovery")


# ------------------------------------------------------------------ the storage Create made


def test_a_missing_storage_is_refused_at_start_and_not_made(engine, paths):
    write(paths["src"] / "a.h5", b"a")
    shutil.rmtree(paths["storage"])

    with pytest.raises(DMError, match=f"the storage {paths['storage']} of {EXPERIMENT.name} is missing"):
        engine.start(EXPERIMENT, sources(paths), once=True)
    assert not paths["storage"].exists()


def test_a_storage_without_its_marker_or_with_another_experiments_is_refused(engine, paths):
    write(paths["src"] / "a.h5", b"a")
    (paths["storage"] / STORAGE_MARKER).unlink()
    with pytest.raises(DMError, match=f"the storage {paths['storage']} has no .dmagic-storage"):
        engine.start(EXPERIMENT, sources(paths), once=True)

    write_storage_marker(paths["storage"], "2026-11-Other-1")
    with pytest.raises(DMError, match="belongs to experiment 2026-11-Other-1"):
        engine.start(EXPERIMENT, sources(paths), once=True)
    assert tree_files(paths["dest"]) == {}


def test_a_missing_destination_folder_is_refused_not_made(engine, paths):
    paths["analysis"].rmdir()
    write(paths["rec"] / "slice.tiff", b"slice")

    with pytest.raises(DMError, match=f"{paths['analysis']} is missing from the storage of {EXPERIMENT.name}"):
        engine.start(EXPERIMENT, sources(paths), once=False)
    assert not paths["analysis"].exists()


def test_a_storage_deleted_while_running_is_an_error_and_never_made_again(engine, paths):
    write(paths["src"] / "a.h5", b"a")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: (paths["dest"] / "a.h5").exists(), what="a.h5")

    shutil.rmtree(paths["storage"])  # rm -rf of the experiment's storage
    write(paths["src"] / "b.h5", b"b")

    progress = wait_for(
        lambda: engine.progress() if engine.progress().state == TransferState.ERROR else None, what="Error"
    )
    assert f"the storage {paths['storage']} of {EXPERIMENT.name} is missing" in progress.message
    run = engine._run
    wait_for(lambda: run.sources[0].files.get("b.h5") and run.sources[0].files["b.h5"].state == QUEUED,
             what="b.h5 due and held")  # fmt: skip
    assert not paths["storage"].exists()

    make_storage(paths["storage"])  # Create ran again: a new storage, a new marker

    wait_for(lambda: "made again since the transfer started" in engine.progress().message, what="the new marker")
    assert sorted(tree_files(paths["storage"])) == [STORAGE_MARKER]
    engine.stop()
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: tree_files(paths["dest"]) == {"a.h5": b"a", "b.h5": b"b"}, what="every file again")


def test_a_storage_that_comes_back_with_its_marker_is_written_again(engine, paths, tmp_path):
    write(paths["src"] / "a.h5", b"a")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: (paths["dest"] / "a.h5").exists(), what="a.h5")
    away = tmp_path / "away"
    paths["storage"].rename(away)  # the disk goes away, then comes back with the same storage
    write(paths["src"] / "b.h5", b"b")
    wait_for(lambda: engine.progress().state == TransferState.ERROR, what="Error")

    away.rename(paths["storage"])

    wait_for(lambda: (paths["dest"] / "b.h5").exists(), what="b.h5 once the storage is back")
    wait_for(lambda: engine.progress().state == TransferState.RUNNING, what="recovery")


# ------------------------------------------------------------------ file names that are not UTF-8

ODD = b"scan\xff.tif"


def test_a_file_name_that_is_not_utf8_is_sent_under_the_same_bytes(engine, paths, caplog):
    paths["src"].mkdir()
    with open(os.path.join(os.fsencode(paths["src"]), ODD), "wb") as odd:
        odd.write(b"odd bytes")
    write(paths["src"] / "ok.tif", b"ok")

    summary = upload(engine, paths)

    assert " 2 files" in summary
    dest = os.fsencode(paths["dest"])
    assert sorted(os.listdir(dest)) == sorted([b"ok.tif", ODD])
    with open(os.path.join(dest, ODD), "rb") as copy:
        assert copy.read() == b"odd bytes"
    assert "scan\\xff.tif" in caplog.text and "is not UTF-8: sent under the same bytes" in caplog.text
    assert set(engine.ledger.sent(str(paths["src"]), str(paths["dest"]))) == {"ok.tif", os.fsdecode(ODD)}
    progress = engine.progress()
    progress.last_file.encode("utf-8")  # what the PVs show must encode
    assert "(2 already there)" in upload(engine, paths)


def test_a_failure_on_a_file_name_that_is_not_utf8_names_it_and_the_others_flow(engine, paths):
    src = os.fsencode(paths["src"])
    os.makedirs(os.path.join(src, ODD))
    with open(os.path.join(src, ODD, b"f.h5"), "wb") as file:
        file.write(b"f")
    with open(os.path.join(os.fsencode(paths["dest"]), ODD), "wb") as blocker:
        blocker.write(b"a file where the folder must go")
    write(paths["src"] / "ok.h5", b"ok")

    engine.start(EXPERIMENT, sources(paths), once=False)

    progress = wait_for(
        lambda: engine.progress() if engine.progress().state == TransferState.ERROR else None, what="Error"
    )
    assert "scan\\xff.tif/f.h5" in progress.message
    progress.message.encode("utf-8")
    wait_for(lambda: "ok.h5" in engine.ledger.sent(str(paths["src"]), str(paths["dest"])), what="ok.h5 recorded")
    os.unlink(os.path.join(os.fsencode(paths["dest"]), ODD))
    wait_for(lambda: os.fsdecode(ODD + b"/f.h5") in engine.ledger.sent(str(paths["src"]), str(paths["dest"])),
             what="the odd file sent and recorded")  # fmt: skip
    engine.stop()
    assert engine.start(EXPERIMENT, sources(paths), once=False).startswith("transferring")


def test_a_ledger_of_schema_1_is_migrated_with_its_rows(tmp_path):
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE files (root TEXT NOT NULL, relpath TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER"
            " NOT NULL, dest TEXT NOT NULL, sent_at REAL NOT NULL, PRIMARY KEY (root, relpath)) WITHOUT ROWID"
        )
        db.execute(
            "CREATE TABLE running (id INTEGER PRIMARY KEY CHECK (id = 1), experiment TEXT NOT NULL,"
            " sources TEXT NOT NULL, once INTEGER NOT NULL, started_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO files VALUES ('/raw/a', 'scan/é.h5', 1, 2, '/dm/a', 0)")
        db.execute("""INSERT INTO running VALUES (1, 'x', '{"/raw/a": "/dm/a"}', 0, 0)""")
        db.execute("PRAGMA user_version = 1")
    db.close()

    ledger = Ledger(path)

    assert ledger.sent("/raw/a", "/dm/a") == {"scan/é.h5": (1, 2)}
    assert ledger.running() == Definition("x", {"/raw/a": "/dm/a"}, False, "", "")
    ledger.add("/raw/a", "scan/é.h5", 3, 4, "/dm/a")
    ledger.commit()
    assert ledger.sent("/raw/a", "/dm/a") == {"scan/é.h5": (3, 4)}  # the same row, not a second one
    ledger.close()


# ------------------------------------------------------------------ a ledger that cannot be read


def damage(path: Path, how: str) -> bytes:
    if how == "garbage":
        path.write_bytes(os.urandom(3000))
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    return path.read_bytes()


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_an_unreadable_ledger_is_kept_aside_and_a_fresh_one_sends_nothing_twice(paths, how):
    for i in range(300):  # enough rows for a ledger of several pages
        write(paths["src"] / f"d{i % 3}" / f"f{i:03d}.h5", b"%d" % i)
    first = LocalTransfer(paths["ledger"], settle_time=0.0, poll_interval=POLL, source_top=paths["top"])
    assert " 300 files" in upload(first, paths)
    first.close()
    inodes = {p: p.stat().st_ino for p in paths["dest"].rglob("*.h5")}
    damaged = damage(paths["ledger"], how)

    engine = LocalTransfer(paths["ledger"], settle_time=0.0, poll_interval=POLL, source_top=paths["top"])
    try:
        assert engine.resume() is None
        progress = engine.progress()
        assert progress.state == TransferState.ERROR
        assert f"the transfer ledger {paths['ledger']} could not be read" in progress.message
        kept = [p for p in paths["ledger"].parent.iterdir() if ".corrupt-" in p.name and not p.name.endswith("-shm")]
        assert [p.name for p in kept] == [f"{paths['ledger'].name}.corrupt-{kept[0].name.split('.corrupt-')[1]}"]
        assert kept[0].read_bytes() == damaged
        assert f"kept it as {kept[0].name}" in progress.message

        assert engine.stop() == "no transfer is running"
        assert engine.progress().state == TransferState.STOPPED  # seen: the alarm is cleared
        summary = upload(engine, paths)
        assert " 0 files" in summary and "(300 already there)" in summary
        assert {p: p.stat().st_ino for p in paths["dest"].rglob("*.h5")} == inodes
    finally:
        engine.close()


# ---- at scale: flat polls, bounded memory, nothing lost (the same paths, at small scale)


def sent_files(engine, paths) -> dict[str, tuple[int, int]]:
    return engine.ledger.sent(str(paths["src"]), str(paths["dest"]))


def test_a_sent_file_costs_no_object_of_its_own(engine, paths):
    for i in range(12):
        write(paths["src"] / f"scan{i % 3}" / f"f{i:02d}.h5", b"x" * i)
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.progress().files_done == 12, what="12 files sent")

    run = engine._run
    assert run.sources[0].files == {}  # the tree knows their names, the ledger their sizes and times
    assert engine.progress().files_total == 12
    assert engine.progress().bytes_done == sum(range(12))


def test_a_file_written_into_an_old_folder_is_found_and_sent(engine, paths):
    for i in range(3):
        write(paths["src"] / f"scan{i}" / "first.h5", b"first")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.progress().files_done == 3, what="the first files")
    run = engine._run
    polls = run.polls
    wait_for(lambda: run.polls > polls + Tree.RECHECK_SECONDS / POLL + 2, what="the folders quiet")  # listed no more

    write(paths["src"] / "scan0" / "late.h5", b"late")

    wait_for(lambda: engine.progress().files_done == 4, what="the late file sent")
    assert (paths["dest"] / "scan0" / "late.h5").read_bytes() == b"late"
    assert engine.progress().files_total == 4


def test_a_file_rewritten_in_place_in_an_old_folder_is_found_by_the_audit(engine, paths, monkeypatch):
    monkeypatch.setattr(Tracker, "AUDIT_PER_POLL", 2)  # the audit pages through the ledger, two files a poll
    for i in range(9):
        write(paths["src"] / f"scan{i % 3}" / f"f{i}.h5", b"first")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: len(sent_files(engine, paths)) == 9, what="9 files recorded")
    folder = paths["src"] / "scan1"
    times = folder.stat()
    with open(folder / "f4.h5", "r+b") as file:  # in place: the folder's times do not change
        file.write(b"SECOND")
    assert (folder.stat().st_mtime_ns, folder.stat().st_ctime_ns) == (times.st_mtime_ns, times.st_ctime_ns)

    sent = (9, 8 * 5 + 6)
    wait_for(lambda: (engine.progress().files_done, engine.progress().bytes_done) == sent, what="the new version sent")
    assert (paths["dest"] / "scan1" / "f4.h5").read_bytes() == b"SECOND"
    progress = engine.progress()
    assert (progress.files_done, progress.files_total) == (9, 9)


def test_a_renamed_folder_is_sent_under_its_new_name_and_the_counts_follow(engine, paths):
    for i in range(4):
        write(paths["src"] / "scan_tmp" / f"f{i}.h5", b"data")
    write(paths["src"] / "other" / "g.h5", b"g")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.progress().files_done == 5, what="5 files sent")

    (paths["src"] / "scan_tmp").rename(paths["src"] / "scan_0001")

    wait_for(lambda: len(list((paths["dest"] / "scan_0001").glob("*.h5"))) == 4, what="the renamed folder")
    wait_for(lambda: engine.progress().files_done == 5, what="the counts")
    assert engine.progress().files_total == 5
    assert engine.progress().bytes_done == 4 * 4 + 1


def test_a_sent_file_deleted_from_its_source_leaves_the_counts(engine, paths):
    for i in range(3):
        write(paths["src"] / "scan" / f"f{i}.h5", b"abc")
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.progress().files_done == 3, what="3 files sent")

    (paths["src"] / "scan" / "f1.h5").unlink()

    wait_for(lambda: engine.progress().files_total == 2, what="the count of files seen")
    progress = engine.progress()
    assert (progress.files_done, progress.bytes_done, progress.bytes_total) == (2, 6, 6)


def test_a_first_scan_is_taken_a_part_at_a_time_and_files_written_meanwhile_are_sent(engine, paths, monkeypatch):
    monkeypatch.setattr(Tracker, "WAITING_FILES", 3)  # a folder a poll, as a million files would go
    found_per_poll = []
    real_poll = Tree.poll

    def poll(tree, budget=None):
        found, removed = real_poll(tree, budget)
        found_per_poll.append(len(found))
        return found, removed

    monkeypatch.setattr(Tree, "poll", poll)
    expected = {}
    for i in range(24):
        expected[f"scan{i % 8}/f{i:02d}.h5"] = write(paths["src"] / f"scan{i % 8}" / f"f{i:02d}.h5", b"%d" % i)
    engine.start(EXPERIMENT, sources(paths), once=False)
    wait_for(lambda: engine.progress().files_total >= 3, what="the first part")

    for i in range(8):  # into folders listed already and folders not listed yet
        expected[f"scan{i}/late.h5"] = write(paths["src"] / f"scan{i}" / "late.h5", b"late")
    write(paths["src"] / "scan8" / "new.h5", b"new")
    expected["scan8/new.h5"] = paths["src"] / "scan8" / "new.h5"

    wait_for(lambda: engine.progress().files_done == len(expected), what="every file")
    assert tree_files(paths["dest"]) == {rel: path.read_bytes() for rel, path in expected.items()}
    assert engine.progress().files_total == len(expected)
    assert len([count for count in found_per_poll if count]) >= 8  # the folders came a few at a time


def test_an_upload_of_a_tree_scanned_a_part_at_a_time_ends_once_every_folder_is_sent(engine, paths, monkeypatch):
    monkeypatch.setattr(Tracker, "WAITING_FILES", 2)
    for i in range(12):
        write(paths["src"] / f"scan{i % 4}" / f"f{i:02d}.h5", b"x")
    engine.start(EXPERIMENT, sources(paths), once=True)

    wait_for(lambda: engine.progress().state == TransferState.STOPPED, what="the upload's end")
    assert engine.progress().files_done == 12
    assert len(tree_files(paths["dest"])) == 12


def test_a_file_written_into_a_folder_while_it_is_listed_is_found_at_the_next_poll(tmp_path, monkeypatch):
    write(tmp_path / "scan" / "a.h5", b"a")
    real = scan._sorted_entries
    written = []

    def listing_then_a_write(entries):
        listed = real(entries)
        if "a.h5" in listed[0] and not written:  # the detector writes just after scan/ was listed
            written.append(write(tmp_path / "scan" / "b.h5", b"b"))
        return listed

    monkeypatch.setattr(scan, "_sorted_entries", listing_then_a_write)
    tree = Tree(str(tmp_path))
    assert [rel for rel, _, _ in tree.poll()[0]] == ["scan/a.h5"]

    assert [rel for rel, _, _ in tree.poll()[0]] == ["scan/b.h5"]


def test_the_scan_lists_a_folder_whose_mtime_was_set_back(tmp_path):
    write(tmp_path / "scan" / "a.h5", b"a")
    tree = Tree(str(tmp_path))
    tree.RECHECK_SECONDS = 0.0  # no re-listing for coarse timestamps: only the folder's times tell
    tree.poll()
    before = (tmp_path / "scan").stat()
    write(tmp_path / "scan" / "b.h5", b"b")
    os.utime(tmp_path / "scan", ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -a or touch -d do

    assert [rel for rel, _, _ in tree.poll()[0]] == ["scan/b.h5"]  # its ctime moved
    assert tree.poll() == ([], [])


def test_a_scan_with_a_budget_lists_the_other_folders_at_later_polls(tmp_path):
    for i in range(6):
        write(tmp_path / f"d{i % 3}" / f"f{i}", b"x")
    tree = Tree(str(tmp_path))

    parts = []
    while not parts or tree.behind:
        found, removed = tree.poll(budget=2)
        assert removed == []
        parts.append(sorted(rel for rel, _, _ in found))

    assert len(parts) == 3 and all(len(part) == 2 for part in parts)
    assert sorted(rel for part in parts for rel in part) == sorted(f"d{i % 3}/f{i}" for i in range(6))
    assert tree.poll(budget=0) == ([], [])


def test_a_file_replaced_by_a_rename_is_both_removed_and_found(tmp_path):
    write(tmp_path / "scan" / "a.h5", b"a")
    tree = Tree(str(tmp_path))
    tree.poll()
    os.replace(write(tmp_path / "scan" / "a.tmp", b"new"), tmp_path / "scan" / "a.h5")

    found, removed = tree.poll()

    assert [rel for rel, _, _ in found] == ["scan/a.h5"]
    assert removed == ["scan/a.h5"]
    assert tree.knows("scan/a.h5")


def test_the_ledger_answers_for_the_paths_asked_and_pages_through_a_source(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    for i in range(5):
        ledger.add("/raw/a", f"scan/f{i}", i, 10 + i, "/dm/a")
    ledger.add("/raw/a", "other", 1, 1, "/dm/elsewhere")
    ledger.commit()
    ledger.add("/raw/a", "scan/f9", 9, 19, "/dm/a")  # buffered, not committed

    assert ledger.sent_of("/raw/a", "/dm/a", ["scan/f1", "scan/f9", "missing", "other"]) == {
        "scan/f1": (1, 11),
        "scan/f9": (9, 19),
    }
    assert ledger.sent_of("/raw/b", "/dm/a", ["scan/f1"]) == {}
    pages, after = [], ""
    while page := ledger.sent_after("/raw/a", "/dm/a", after, 2):
        pages.append([rel for rel, _, _ in page])
        after = page[-1][0]
    assert pages == [["scan/f0", "scan/f1"], ["scan/f2", "scan/f3"], ["scan/f4"]]
    ledger.close()
