"""The audit log records who wrote what and what came of it, and a flood of refused writes does not drown it.

Through the installed IOC (only 127.0.0.1 may write): commands through pyepics (libca, claiming this host's
user and host names), refused writes from another loopback address claiming other names. In process: the
rate limits with a fake clock, and how values are shown.
"""

from __future__ import annotations

import getpass
import logging
import socket
import stat

import caproto as ca
import numpy
import pytest
from caproto import ChannelType
from dmagic_ioc.ioc.epics.audit import AuditLog, Write, shown_value
from dmagic_ioc.ioc.epics.logs import RateLimit

from ..e2e.fixtures import BETWEEN, IN_SECOND
from ..e2e.harness import IOC
from ..helpers import wait_for
from .test_access import BareClient, restricted, search_port, second_loopback_address_works

pytestmark = pytest.mark.faults

WRITER = "127.0.0.1"


def audit_lines(ioc: IOC) -> list[str]:
    path = ioc.tmp / "state" / "logs" / "audit.log"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def lines_about(ioc: IOC, pv: str) -> list[str]:
    return [line for line in audit_lines(ioc) if f" pv={ioc.prefix}{pv} " in line]


@pytest.fixture
def guarded_ioc(config, tmp_path):
    with IOC(restricted(config, write_hosts=[f"{WRITER}/32"]), tmp_path) as running:
        yield running


def test_a_create_through_pyepics_is_one_line_naming_the_client_and_ok(guarded_ioc):
    ioc = guarded_ioc
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    status, _ = ioc.command("Create")
    assert status.startswith("created experiment")
    (line,) = wait_for(lambda: lines_about(ioc, "Create"), what="the Create in the audit log")
    assert f"client={WRITER} " in line
    assert f"user={getpass.getuser()!r} " in line and f"host={socket.gethostname()!r} " in line
    assert " value=1 " in line and line.endswith(" outcome=ok")
    (offset,) = lines_about(ioc, "TimeOffsetDays")  # settings are recorded too
    assert f"value={IN_SECOND}" in offset and offset.endswith("outcome=ok")
    audit = ioc.tmp / "state" / "logs" / "audit.log"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    assert " pv=" not in ioc.log()  # the audit has its own file, not the main log


def test_a_failed_command_says_why(guarded_ioc):
    ioc = guarded_ioc
    ioc.put("TimeOffsetDays", BETWEEN)
    ioc.command("Refresh")
    status, _ = ioc.command("Create")
    (line,) = wait_for(lambda: lines_about(ioc, "Create"), what="the Create in the audit log")
    assert " outcome=failed: " in line
    assert status.split(";")[0] in line  # the reason Status gives


def test_a_value_with_control_characters_stays_on_its_line(guarded_ioc):
    ioc = guarded_ioc
    ioc.put("SelectName", "2026-11-A\nforged=line\u202e")
    (line,) = wait_for(lambda: lines_about(ioc, "SelectName"), what="the write in the audit log")
    assert r"value='2026-11-A\nforged=line\u202e' " in line
    assert not any(other.startswith("forged") for other in audit_lines(ioc))


@pytest.mark.skipif(not second_loopback_address_works(), reason="cannot bind 127.0.0.2 here")
def test_refused_writes_are_recorded_at_a_bounded_rate_and_the_writer_still_is(guarded_ioc):
    ioc = guarded_ioc
    intruder = BareClient(ioc.prefix + "Delete", search_port(ioc), source="127.0.0.2", host_name="opi-allowed",
                          user="2bmbop")  # fmt: skip
    try:
        channel, _ = intruder.connect(ioc.prefix + "DeleteConfirm")
        for _ in range(200):
            assert intruder.put(channel, "2026-11-Everything") == ca.CAStatus.ECA_NOWTACCESS.value
    finally:
        intruder.close()
    refused = wait_for(lambda: lines_about(ioc, "DeleteConfirm"), what="the refusal in the audit log")
    assert len(refused) == 5  # a minute's share for that address; the rest counted in a line later
    assert "client=127.0.0.2 user='2bmbop' host='opi-allowed' " in refused[0]
    assert "value='2026-11-Everything' " in refused[0]
    assert refused[0].endswith("outcome=refused: its address is not in ioc.access.write_hosts")
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    ioc.command("Create")
    (line,) = wait_for(lambda: lines_about(ioc, "Create"), what="the writer's Create in the audit log")
    assert f"client={WRITER} " in line and line.endswith("outcome=ok")


# --------------------------------------------------------------------------- in process


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_write(pv: str = "t:Create", address: str = "10.0.0.9") -> Write:
    return Write(pv, "1", address, "visitor", "opi")


def test_the_refused_writes_held_back_are_counted_by_address_and_pv(caplog):
    clock = Clock()
    audit = AuditLog(logging.getLogger("test.audit"), clock=clock)
    with caplog.at_level(logging.INFO, "test.audit"):
        for _ in range(40):
            audit.refused(a_write("t:Delete"), "its address is not in ioc.access.write_hosts")
        audit.refused(a_write("t:Create"), "its address is not in ioc.access.write_hosts")
        audit.finished(a_write("t:Create", "10.0.0.1"))  # admitted writes have their own share
        assert len(caplog.messages) == 6
        clock.now += 61
        audit.refused(a_write("t:Create", "10.0.0.8"), "its address is not in ioc.access.write_hosts")
    held, line = caplog.messages[-2:]
    assert held == "refused writes not recorded in the last minute, by address: 10.0.0.9: 36 (t:Delete 35, t:Create 1)"
    assert "client=10.0.0.8 " in line


def test_a_rate_limit_bounds_every_key_and_all_of_them():
    reports = []
    clock = Clock()
    limit = RateLimit(reports.append, per_key=2, total=5, clock=clock)
    said = [limit.admit(f"10.0.0.{n % 4}", "x") is not None for n in range(12)]
    assert sum(said) == 5  # in all
    assert limit.admit("10.0.0.0", "x") is None  # and that key had its two
    clock.now += 60
    assert limit.admit("10.0.0.0", "y") == {"x": 2}  # its next line carries what was held back since
    limit.flush()
    (by_key,) = reports  # one report for every key whose minute has ended
    assert by_key == {"10.0.0.1": {"x": 2}, "10.0.0.2": {"x": 2}, "10.0.0.3": {"x": 2}}


def test_values_are_shown_escaped_and_cut():
    assert shown_value(numpy.frombuffer(b"ab\x00junk", dtype=numpy.uint8), ChannelType.CHAR) == "'ab'"
    assert shown_value([b"caf\xc3\xa9\xff"], ChannelType.STRING) == r"'café\\xff'"
    assert shown_value(numpy.array([2.5]), ChannelType.DOUBLE) == "2.5"
    assert shown_value(list(range(20)), ChannelType.LONG) == "[0 1 2 3 4 5 6 7 ...] (20 values)"
    long = shown_value(numpy.frombuffer(b"x" * 5000, dtype=numpy.uint8), ChannelType.CHAR)
    assert long == repr("x" * 200) + "... (5,000 bytes)"
    assert shown_value([b"\x1b[2J\n"], ChannelType.STRING) == r"'\x1b[2J\n'"
