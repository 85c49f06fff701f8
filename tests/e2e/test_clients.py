"""Everyday clients against the installed IOC: clearing text, nonsense numbers and enums, record fields,
state PVs when a put completes, and logs that stay readable (docs/interface.md sections 4, 5, 8)."""

from __future__ import annotations

import math

import epics
import pytest
from caproto import ChannelType, ErrorResponseReceived
from caproto.sync.client import read as caproto_read
from caproto.sync.client import write as caproto_write

from ..helpers import CA_TIMEOUT, contract_pvs, wait_for

pytestmark = pytest.mark.e2e

MAJOR = 2
WRITABLE_TEXT = [name for name, kind, _, access in contract_pvs() if access == "RW" and "char" in kind]
WRITABLE_STRINGS = [name for name, kind, _, access in contract_pvs() if access == "RW" and kind == "string"]


def write(ioc, name: str, data, data_type: ChannelType | None = None):
    """A raw caproto put with completion, of `data` as `data_type` (None: the PV's own type)."""
    return caproto_write(ioc.prefix + name, data, notify=True, data_type=data_type, timeout=CA_TIMEOUT, repeater=False)


def caput(name: str, value) -> int:
    """pyepics' put with completion, waiting CA_TIMEOUT to connect (its default, 5 s, is tight on a loaded machine)."""
    return epics.caput(name, value, wait=True, timeout=CA_TIMEOUT, connection_timeout=CA_TIMEOUT)


def caget(name: str, **kwargs):
    """pyepics' get, waiting CA_TIMEOUT to connect and to read."""
    return epics.caget(name, timeout=CA_TIMEOUT, connection_timeout=CA_TIMEOUT, **kwargs)


def test_every_writable_text_pv_clears_from_every_client(ioc):
    assert "Manual:Badges" in WRITABLE_TEXT and "Manual:Start" in WRITABLE_STRINGS
    clears = {
        "pyepics caput ''": lambda name: caput(ioc.prefix + name, ""),
        "one NUL byte": lambda name: write(ioc, name, b"\0", ChannelType.CHAR),
        "zero-length CHAR array": lambda name: write(ioc, name, b"", ChannelType.CHAR),
        "DBR_STRING ''": lambda name: write(ioc, name, [b""], ChannelType.STRING),
    }
    for name in WRITABLE_TEXT + WRITABLE_STRINGS:
        for how, clear in clears.items():
            ioc.put(name, "12")
            assert ioc.get(name) == "12", name
            clear(name)
            assert ioc.get(name) == "", f"{name} not cleared by {how}"


def test_a_cleared_manual_badges_no_longer_blocks_create_manual(ioc):
    ioc.put("Manual:Badges", "not-a-badge")
    status, severity = ioc.command("CreateManual")
    assert severity == MAJOR and "Manual:Badges has entries that are not badge numbers" in status
    caput(ioc.prefix + "Manual:Badges", "")
    status, severity = ioc.command("CreateManual")
    assert severity == 0, status


def test_utf8_and_latin1_text_reads_back(ioc):
    ioc.put("Manual:LastName", "Müller-Łukasiewicz")  # UTF-8 bytes
    assert ioc.get("Manual:LastName") == "Müller-Łukasiewicz"
    write(ioc, "Manual:LastName", "Øberg".encode("latin-1") + b"\0", ChannelType.CHAR)  # an older client
    assert ioc.get("Manual:LastName") == "Øberg"
    raw = caproto_read(ioc.prefix + "Manual:LastName", repeater=False, timeout=CA_TIMEOUT).data
    assert bytes(raw).split(b"\0")[0] == "Øberg".encode()


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("TimeOffsetDays", [math.nan, math.inf, -math.inf, 1e12, -3661]),
        ("RefreshPeriod", [math.nan, -5, 1e-9, 5, 86401, math.inf]),
        ("Manual:GUP", [-3, 2.5, math.nan]),
    ],
)
def test_numbers_that_make_no_sense_are_refused_with_every_data_type(ioc, name, bad):
    before = ioc.get(name)
    for value in bad:
        for data_type in (ChannelType.DOUBLE, ChannelType.FLOAT, ChannelType.LONG, ChannelType.STRING):
            if data_type == ChannelType.LONG and not (math.isfinite(value) and value == int(value)):
                continue  # not sayable as a LONG
            if data_type == ChannelType.FLOAT and math.isfinite(value) and abs(value) > 3e38:
                continue
            data = [str(value).encode()] if data_type == ChannelType.STRING else [value]
            if data_type == ChannelType.LONG:
                data = [int(value)]
            with pytest.raises(ErrorResponseReceived):
                write(ioc, name, data, data_type)
            assert ioc.get(name) == before, (name, value, data_type)
            assert name in ioc.get("Status") and ioc.severity("Status") == MAJOR
    assert "write refused" in ioc.get("Status")


def test_sensible_numbers_are_taken(ioc):
    write(ioc, "RefreshPeriod", [0])
    assert ioc.get("RefreshPeriod") == 0
    write(ioc, "RefreshPeriod", [b"60"], ChannelType.STRING)
    assert ioc.get("RefreshPeriod") == 60
    write(ioc, "TimeOffsetDays", [-3660.0])
    assert ioc.get("TimeOffsetDays") == -3660
    write(ioc, "Manual:GUP", [1013377.0], ChannelType.DOUBLE)
    assert ioc.get("Manual:GUP") == 1013377


def test_enum_index_out_of_range_is_refused_and_the_pv_stays_readable(ioc):
    for name in ("EmailMode", "Create", "DaqStop", "Refresh"):
        for data_type, value in ((ChannelType.LONG, 7), (ChannelType.INT, 2), (ChannelType.DOUBLE, 1.5),
                                 (ChannelType.DOUBLE, -1.0), (ChannelType.STRING, b"Bogus")):  # fmt: skip
            with pytest.raises(ErrorResponseReceived):
                write(ioc, name, [value], data_type)
            assert ioc.get(name) in ("New users", "Done"), name
    write(ioc, "EmailMode", [b"All users"], ChannelType.STRING)
    assert ioc.get("EmailMode") == "All users"
    write(ioc, "EmailMode", [0], ChannelType.LONG)
    assert ioc.get("EmailMode") == "New users"


def test_record_fields_answer_and_cannot_be_written(ioc):
    p = ioc.prefix
    assert caget(p + "Status.RTYP") == "waveform"
    assert caget(p + "Status.DESC").startswith("Last human-readable result")
    assert caget(p + "Status.NAME") == p + "Status"
    assert caget(p + "Status.SEVR", as_string=True) == "NO_ALARM"
    assert caget(p + "Status.STAT", as_string=True) == "NO_ALARM"
    assert caget(p + "Status.NELM") == 512
    assert caget(p + "Status.FTVL", as_string=True) == "CHAR"
    assert caget(p + "TimeOffsetDays.RTYP") == "ao"
    assert caget(p + "TimeOffsetDays.EGU") == "d"
    assert caget(p + "TimeOffsetDays.PREC") == 2
    assert caget(p + "Busy.ZNAM") == "Idle"
    assert caget(p + "EmailMode.RTYP") == "mbbo"
    assert caget(p + "EmailMode.ONST") == "All users"
    assert caget(p + "ProposalNumber.RTYP") == "stringin"
    for field, value in (("EmailMode.ZRST", [b"hacked"]), ("Status.DESC", [b"x"]), ("Create.PROC", [1]),
                         ("EmailMode.RVAL", [5]), ("Create.RVAL", [1])):  # fmt: skip
        with pytest.raises(ErrorResponseReceived):
            caproto_write(p + field, value, notify=True, timeout=CA_TIMEOUT, repeater=False)
    assert caget(p + "EmailMode.ZRST") == "New users"
    for field in ("DM:Health.THST", "DM:Health.FFST", "Create.ONAM", "Create.ZNAM", "EmailMode.ONST"):
        caget(p + field)  # reading a field changes nothing
    status = ioc.get("Status")
    assert epics.PV(p + "DM:Health").enum_strs == ("OK", "Error", "Disabled")
    assert ioc.get("EmailMode") == "New users" and ioc.get("Create") == "Done" and ioc.get("Status") == status
    assert ioc.get("ExperimentName") == ""  # Create did not run


def test_daq_state_is_current_when_the_put_completes(ioc):
    ioc.command("CreateManual")
    for _ in range(5):
        ioc.command("DaqStart")
        assert ioc.get("DaqState") == "Running"
        ioc.command("DaqStop")
        assert ioc.get("DaqState") == "Stopped"


def test_a_refused_put_is_one_log_line_not_a_traceback(ioc):
    with pytest.raises(ErrorResponseReceived):
        write(ioc, "TimeOffsetDays", [math.nan])
    ioc.put("SelectName", "2026-01-Nobody-1")
    with pytest.raises(ErrorResponseReceived):
        write(ioc, "Select", [1])
    wait_for(lambda: "no experiment named 2026-01-Nobody-1" in ioc.log(), what="the refusal in the log")
    log = ioc.log()
    assert "Traceback" not in log, log
    assert log.count("TimeOffsetDays: write refused") == 1, log


def test_control_characters_from_a_client_are_shown_escaped_on_status(ioc):
    ioc.put("SelectName", "a\x1b[2Jb\x07")  # a terminal escape and a bell in the argument
    with pytest.raises(ErrorResponseReceived):
        write(ioc, "Select", [1])
    status = ioc.get("Status")
    assert "\\x1b[2J" in status and "\\x07" in status, status
    assert not any(ord(c) < 32 for c in status), status
