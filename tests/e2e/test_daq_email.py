"""Data transfer and the data-access e-mail, through the installed IOC."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from ..helpers import free_port, wait_for
from .fixtures import IN_SECOND
from .harness import IOC

pytestmark = pytest.mark.e2e

MINOR, MAJOR = 1, 2
NAME = "2026-11-DArcy-1013377"


def create(ioc: IOC) -> None:
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    status, severity = ioc.command("Create")
    assert severity == 0, status


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_daq_transfers_whole_files_and_picks_up_rec(ioc, tmp_path):
    create(ioc)
    raw = tmp_path / "data" / NAME
    storage = tmp_path / "storage" / "2026-11" / NAME
    (raw / "scan1").mkdir()
    for i in range(5):
        (raw / "scan1" / f"proj_{i:03d}.h5").write_bytes(os.urandom(100_000 + i))
    status, severity = ioc.command("DaqStart")
    assert severity == 0, status
    wait_for(lambda: ioc.get("DaqState") == "Running", what="DaqState Running")
    wait_for(lambda: ioc.get("Daq:FilesDone") == 5, timeout=15, what="5 files")
    for i in range(5):
        name = f"scan1/proj_{i:03d}.h5"
        assert digest(storage / "data" / name) == digest(raw / name)

    # a file written slowly never shows partial in storage
    slow = raw / "scan1" / "slow.h5"
    seen_sizes = []
    with open(slow, "wb") as out:
        for _ in range(8):
            out.write(os.urandom(50_000))
            out.flush()
            target = storage / "data" / "scan1" / "slow.h5"
            if target.exists():
                seen_sizes.append(target.stat().st_size)
            time.sleep(0.15)
    wait_for(lambda: (storage / "data/scan1/slow.h5").exists(), timeout=15, what="the slow file")
    assert seen_sizes == []
    assert digest(storage / "data/scan1/slow.h5") == digest(slow)

    status, severity = ioc.command("DaqStart")  # again: reports that it runs
    assert severity == 0 and "already running" in status

    # the reconstruction folder: files there land in analysis/
    rec = tmp_path / "data" / f"{NAME}_rec"
    (rec / "recon_00001.tiff").write_bytes(b"x" * 1234)
    wait_for(lambda: (storage / "analysis" / "recon_00001.tiff").exists(), timeout=15, what="the _rec file")
    assert ioc.get("Daq:Percent") > 0 and ioc.get("Daq:Bytes") > 500_000
    assert ioc.get("Daq:LastFile") != ""

    status, severity = ioc.command("DaqStop")
    assert severity == 0, status
    wait_for(lambda: ioc.get("DaqState") == "Stopped", what="DaqState Stopped")
    assert not list(storage.rglob("*.part*"))


# A slow disk under the installed IOC, loaded at its start (sitecustomize on PYTHONPATH): a big file's data
# goes 1 MiB per copy step, ten steps a second, and waits halfway until the test has read the progress there.
SLOW_DISK = """
import os, time

_copy_file_range = os.copy_file_range


def _slow_copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
    size = os.fstat(src).st_size
    if size >= 16 * 1024 * 1024:
        while offset_src >= size // 2 and not os.path.exists(os.environ["DMAGIC_TEST_RELEASE"]):
            time.sleep(0.02)
        time.sleep(0.1)
        count = min(count, 1024 * 1024)
    return _copy_file_range(src, dst, count, offset_src, offset_dst)


os.copy_file_range = _slow_copy_file_range
"""


def test_daq_shows_the_bytes_of_one_big_file_while_it_is_copied(config, tmp_path):
    """One big file among four small ones: Daq:Bytes rises during its copy, Daq:Rate is not 0, Daq:Percent is
    by bytes (they showed 80, the small files' bytes and 0.0 for the whole copy, then jumped)."""
    hook, release = tmp_path / "slow_disk", tmp_path / "release"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_DISK, encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "DMAGIC_TEST_RELEASE": str(release)}  # fmt: skip
    raw, size, small = tmp_path / "data" / NAME, 48 * 1024 * 1024, 4 * 100_000
    total = size + small
    with IOC(config, tmp_path, extra_env=env) as ioc:
        create(ioc)
        settled = time.time() - 60
        for i in range(4):
            (raw / f"dark_{i}.h5").write_bytes(os.urandom(100_000))
            os.utime(raw / f"dark_{i}.h5", (settled, settled))
        with open(raw / "scan.h5", "wb") as big:
            big.truncate(size)  # sparse: made at once
        os.utime(raw / "scan.h5", (settled, settled))
        status, severity = ioc.command("DaqStart")
        assert severity == 0, status

        readings = []

        def halfway() -> bool:
            readings.append((ioc.get("Daq:Bytes"), ioc.get("Daq:Percent"), ioc.get("Daq:Rate")))
            return readings[-1][0] >= small + size // 2

        wait_for(halfway, timeout=60, interval=0.1, what="Daq:Bytes halfway through scan.h5")
        assert not (tmp_path / "storage" / "2026-11" / NAME / "data" / "scan.h5").exists()

        def published_together() -> tuple[float, float] | None:
            """Bytes and Percent of one publication (held halfway, they stop changing)."""
            bytes_done, percent = ioc.get("Daq:Bytes"), ioc.get("Daq:Percent")
            return (bytes_done, percent) if percent == pytest.approx(100 * bytes_done / total, abs=0.06) else None

        at_half = wait_for(published_together, what="Daq:Percent of Daq:Bytes")
        release.touch()
        wait_for(lambda: ioc.get("Daq:FilesDone") == 5, timeout=60, what="the five files")
        done = (ioc.get("Daq:Bytes"), ioc.get("Daq:Percent"), ioc.get("Daq:FilesTotal"))
        print(f"during scan.h5 (Bytes, Percent, Rate): {readings}; held halfway: {at_half}; at the end: {done}")
        ioc.command("DaqStop")

    during = [reading for reading in readings if small < reading[0] < total]
    assert len({b for b, _, _ in during}) >= 2, readings  # Bytes moved at least twice within the big file
    assert [b for b, _, _ in readings] == sorted(b for b, _, _ in readings), readings  # never fell
    assert any(rate > 0 for _, _, rate in during), readings
    assert all(0 < percent < 80 for _, percent, _ in during), readings  # by bytes, not 4 files of 5
    assert 49 < at_half[1] < 51
    assert done == (total, 100.0, 5)


def test_upload_ends_by_itself_with_a_summary(ioc, tmp_path):
    create(ioc)
    raw = tmp_path / "data" / NAME
    for i in range(3):
        (raw / f"f{i}.dat").write_bytes(b"a" * 1000)
        os.utime(raw / f"f{i}.dat", (time.time() - 60, time.time() - 60))  # settled long ago
    status, severity = ioc.command("Upload")
    assert severity == 0, status
    wait_for(lambda: "upload" in ioc.get("Status") and "finished" in ioc.get("Status"), timeout=15,
             what="the upload summary")  # fmt: skip
    assert ioc.get("DaqState") == "Stopped" and ioc.get("Daq:FilesDone") == 3


def test_daq_resumes_after_kill_9_with_every_file_once(config, tmp_path):
    raw = tmp_path / "data" / NAME
    with IOC(config, tmp_path) as ioc:
        create(ioc)
        for i in range(300):
            (raw / f"p{i:04d}.bin").write_bytes(os.urandom(20_000))
        ioc.command("DaqStart")
        wait_for(lambda: ioc.get("Daq:FilesDone") >= 20, timeout=20, what="some files")
        ioc.kill()
    storage = tmp_path / "storage" / "2026-11" / NAME / "data"
    with IOC(config, tmp_path) as ioc:
        wait_for(lambda: ioc.get("DaqState") == "Running", timeout=10, what="the transfer to resume")
        wait_for(lambda: ioc.get("Daq:FilesDone") == 300, timeout=60, what="all 300 files")
        ioc.command("DaqStop")
    arrived = sorted(p.name for p in storage.iterdir())
    assert arrived == sorted(f"p{i:04d}.bin" for i in range(300))
    assert all(digest(storage / n) == digest(raw / n) for n in arrived)


def test_daq_error_is_major_and_names_the_file(ioc, tmp_path):
    create(ioc)
    storage = tmp_path / "storage" / "2026-11" / NAME / "data"
    (storage / "blocked").write_text("a file where a folder must go")
    raw = tmp_path / "data" / NAME
    (raw / "blocked").mkdir()
    (raw / "blocked" / "x.dat").write_bytes(b"1")
    ioc.command("DaqStart")
    wait_for(lambda: ioc.get("DaqState") == "Error", timeout=15, what="DaqState Error")
    assert ioc.severity("DaqState") == MAJOR
    assert "blocked" in ioc.get("Status")
    (storage / "blocked").unlink()
    wait_for(lambda: ioc.get("DaqState") == "Running", timeout=30, what="recovery")
    ioc.command("DaqStop")


# ------------------------------------------------------------------ e-mail


class Inbox:
    """An SMTP server on loopback that refuses one address."""

    refused = "sven.oberg@example.se"

    def __init__(self):
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture
def inbox():
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


def test_email_to_each_user_once_and_emailed_users_survive_restart(config, tmp_path, inbox):
    handler, port = inbox
    config["email"] = {"enabled": True, "smtp_host": "127.0.0.1", "smtp_port": port, "sender": "2bm@example.gov"}
    with IOC(config, tmp_path) as ioc:
        create(ioc)
        assert ioc.get("Email:Health") == "OK"
        status, severity = ioc.command("Email")
        assert severity == MINOR, status  # one refused address, one user without address
        assert "d310012" in status and "d100001" in status  # failed (refused) and skipped (no address)
        recipients = sorted(r for rcpts, _ in handler.messages for r in rcpts)
        assert recipients == ["jl.darcy@example.fr", "zoe.mueller@example.de"]
        assert all(len(rcpts) == 1 for rcpts, _ in handler.messages)  # nobody sees another's address
        body = message_from_bytes(handler.messages[0][1])
        text = "".join(part.get_payload(decode=True).decode() for part in body.walk() if not part.is_multipart())
        assert NAME in text and "Fast 4D imaging of foam coarsening" in text
        assert {p.get_content_type() for p in body.walk()} >= {"text/plain", "text/html"}
        assert sorted(ioc.get("EmailedUsers").split(",")) == ["d310010", "d310011"]
        handler.messages.clear()
        status, severity = ioc.command("Email")  # "New users": nobody new but the refused one
        assert [r for rcpts, _ in handler.messages for r in rcpts] == []
    with IOC(config, tmp_path) as ioc:
        assert sorted(ioc.get("EmailedUsers").split(",")) == ["d310010", "d310011"]
        ioc.put("EmailMode", "All users")
        handler.messages.clear()
        ioc.command("Email")
        assert len(handler.messages) == 2


def test_email_disabled_is_refused(ioc):
    create(ioc)
    status, severity = ioc.command("Email")
    assert severity == MAJOR and "not enabled" in status


def test_a_deleted_then_recreated_experiment_gets_its_files_again(ioc, tmp_path):
    create(ioc)
    raw = tmp_path / "data" / NAME
    (raw / "a.dat").write_bytes(b"1" * 1000)
    os.utime(raw / "a.dat", (time.time() - 60, time.time() - 60))
    ioc.command("Upload")
    wait_for(lambda: "finished" in ioc.get("Status"), timeout=15, what="the first upload")
    ioc.put("DeleteConfirm", NAME)
    status, severity = ioc.command("Delete")
    assert severity == 0, status
    create(ioc)
    ioc.command("Upload")
    wait_for(lambda: "finished" in ioc.get("Status"), timeout=15, what="the second upload")
    assert (tmp_path / "storage" / "2026-11" / NAME / "data" / "a.dat").read_bytes() == b"1" * 1000
