"""PV Access: the installed IOC serves every PV over PVA too, same names, puts down the same path as CA's.

p4p's client (pvxs) and ophyd-async's PVA backend against `dmagic-ioc`, with pyepics (libca) on the other
side: what one protocol writes the other reads and monitors see; a command's put completes when it ends;
a refused put is an error to the client, not a timeout. The session pins EPICS_PVA*/EPICS_PVAS* to
loopback ports of its own (`tests/loopback.py`).
"""

from __future__ import annotations

import re

import pytest

from ..helpers import CA_TIMEOUT, REPO, wait_for
from .fixtures import BETWEEN, IN_SECOND
from .harness import IOC

pytest.importorskip("p4p", reason="PV Access needs p4p: pip install '.[pva]'")
from p4p.client.thread import Context, RemoteError  # noqa: E402

pytestmark = pytest.mark.e2e

MINOR, MAJOR = 1, 2


@pytest.fixture(scope="module")
def pva():
    with Context("pva") as context:
        yield context


def get(pva: Context, ioc: IOC, name: str):
    return pva.get(ioc.prefix + name, timeout=CA_TIMEOUT)


def put(pva: Context, ioc: IOC, name: str, value) -> None:
    pva.put(ioc.prefix + name, value, timeout=CA_TIMEOUT)


def audit_lines(ioc: IOC, pv: str) -> list[str]:
    path = ioc.tmp / "state" / "logs" / "audit.log"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [line for line in lines if f" pv={ioc.prefix}{pv} " in line]


def test_numbers_enums_and_text_read_with_display_and_alarm(ioc, pva):
    ioc.put("TimeOffsetDays", BETWEEN)
    ioc.command("Refresh")  # no beamtime then: ProposalActive No, MINOR
    offset = get(pva, ioc, "TimeOffsetDays")
    assert offset == pytest.approx(BETWEEN)
    display = offset.raw["display"]
    assert (display["units"], display["precision"]) == ("d", 2)
    assert (display["limitLow"], display["limitHigh"]) == (-3660, 3660)
    assert display["description"] == "Look this many days ahead (+) or back (-)"
    assert offset.raw["timeStamp.secondsPastEpoch"] > 0
    active = get(pva, ioc, "ProposalActive")
    assert (active.raw["value.choices"], active.choice) == (["No", "Yes"], "No")
    assert active.severity == MINOR == ioc.severity("ProposalActive")
    assert active.raw["alarm.message"] == "STATE"
    assert get(pva, ioc, "Refresh").raw["value.choices"] == ["Done", "Busy"]  # a command: an NTEnum too
    assert get(pva, ioc, "Heartbeat") >= 0 and get(pva, ioc, "Version") == ioc.get("Version")
    assert get(pva, ioc, "Status") == ioc.get("Status") != ""


def test_non_ascii_text_reads_and_writes_as_utf8(ioc, pva):
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    assert get(pva, ioc, "Users:Names") == "Jean-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg"
    put(pva, ioc, "Manual:LastName", "Müller-Łukasiewicz")
    assert ioc.get("Manual:LastName") == "Müller-Łukasiewicz"


def test_a_pva_put_of_a_setting_is_read_over_ca_and_audited_as_pva(ioc, pva):
    put(pva, ioc, "TimeOffsetDays", 12.5)
    assert ioc.get("TimeOffsetDays") == 12.5
    put(pva, ioc, "EmailMode", "All users")
    assert ioc.get("EmailMode") == "All users"
    (line,) = wait_for(lambda: audit_lines(ioc, "TimeOffsetDays"), what="the PVA put in the audit log")
    assert line.split(" ", 1)[1].startswith("protocol=PVA client=127.0.0.1 ") and line.endswith(" outcome=ok")
    ioc.put("TimeOffsetDays", 1.0)
    lines = wait_for(lambda: audit_lines(ioc, "TimeOffsetDays")[1:], what="the CA put in the audit log")
    assert " protocol=CA client=127.0.0.1 " in lines[0]


def test_a_ca_put_is_seen_by_a_pva_monitor(ioc, pva):
    seen = []
    subscription = pva.monitor(ioc.prefix + "TimeOffsetDays", seen.append)
    try:
        wait_for(lambda: seen, what="the monitor's first update")
        ioc.put("TimeOffsetDays", 42.0)
        wait_for(lambda: any(value == 42.0 for value in seen), what="the CA put on the PVA monitor")
    finally:
        subscription.close()


def test_a_pv_no_pva_client_has_read_shows_what_ca_wrote_before_and_after(ioc, pva):
    """A PV opens over PVA at its first client (nothing is posted before): it opens with the channel's value."""
    ioc.put("Manual:Institution", "Argonne National Laboratory")
    assert get(pva, ioc, "Manual:Institution") == "Argonne National Laboratory"
    ioc.put("Manual:Institution", "Advanced Photon Source")
    assert get(pva, ioc, "Manual:Institution") == "Advanced Photon Source"


def test_a_pva_command_completes_when_the_command_ends(ioc, pva):
    statuses = []
    subscription = pva.monitor(ioc.prefix + "Status", statuses.append)
    try:
        put(pva, ioc, "TimeOffsetDays", IN_SECOND)
        put(pva, ioc, "Refresh", 1)  # returns when the command has ended
        assert "1013377" in ioc.get("Status") and ioc.get("Busy") == "Idle"
        assert ioc.get("LastCommand") == "Refresh" and ioc.get("ProposalNumber") == "1013377"
        assert get(pva, ioc, "Refresh").choice == "Done"
        wait_for(lambda: any("1013377" in status for status in statuses), what="Status on the PVA monitor")
    finally:
        subscription.close()


def test_a_failed_command_is_an_error_with_the_status_text(ioc, pva):
    put(pva, ioc, "DeleteConfirm", "not the experiment")
    with pytest.raises(RemoteError) as refused:
        put(pva, ioc, "Delete", 1)
    assert ioc.severity("Status") == MAJOR and str(refused.value) in ioc.get("Status")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("EmailMode", 7, "it takes one of 0 (New users), 1 (All users)"),
        ("SelectName", "x" * 300, "it holds 256 bytes of UTF-8 text, not 300"),
        ("TimeOffsetDays", 1e9, "it takes a number from -3660 to 3660"),
    ],
)
def test_a_refused_put_is_an_error_at_once_said_on_status(ioc, pva, name, value, says):
    before = ioc.get(name)
    with pytest.raises(RemoteError, match=re.escape(says)):  # an error, not a timeout
        put(pva, ioc, name, value)
    assert ioc.get(name) == before
    assert says in ioc.get("Status") and ioc.severity("Status") == MAJOR


def test_a_read_only_pv_refuses_a_pva_put(ioc, pva):
    with pytest.raises(RemoteError, match="no write access: the PV is read-only"):
        put(pva, ioc, "Heartbeat", 5)


def test_a_write_from_an_address_not_in_write_hosts_is_refused(config, tmp_path, pva):
    guarded = {**config, "ioc": {**config["ioc"], "access": {"write_hosts": ["127.0.0.2/32"]}}}
    with IOC(guarded, tmp_path) as ioc:
        with pytest.raises(RemoteError, match="no write access: its address is not in ioc.access.write_hosts"):
            put(pva, ioc, "TimeOffsetDays", 5.0)
        assert ioc.get("TimeOffsetDays") == 0.0
        (line,) = wait_for(lambda: audit_lines(ioc, "TimeOffsetDays"), what="the refusal in the audit log")
        assert " protocol=PVA client=127.0.0.1 " in line and "outcome=refused: its address is not" in line


def test_pva_enabled_false_serves_channel_access_only(config, tmp_path, pva):
    with IOC({**config, "pva": {"enabled": False}}, tmp_path) as ioc:
        assert ioc.get("Heartbeat") >= 0
        with pytest.raises(TimeoutError):
            pva.get(ioc.prefix + "Heartbeat", timeout=1.0)
        assert "PV Access" not in ioc.log()


def test_without_p4p_the_ioc_says_so_once_and_serves_channel_access(config, tmp_path):
    shadow = tmp_path / "no-p4p" / "p4p"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named p4p')\n", encoding="utf-8")
    with IOC(config, tmp_path, extra_env={"PYTHONPATH": str(shadow.parent)}) as ioc:
        assert ioc.get("Heartbeat") >= 0
        said = [line for line in ioc.log().splitlines() if "PV Access" in line]
        assert len(said) == 1 and "PV Access not served: No module named p4p" in said[0], said


def test_every_pv_is_served_as_the_pv_table_of_the_docs_says(ioc, pva):
    from dmagic_ioc.ioc.tools.pvinfo import ioc_pvs
    from dmagic_ioc.ioc.tools.pvtable import PVA_TYPES

    served = {"NTScalar string": ("epics:nt/NTScalar:1.0", "s"), "NTScalar int32": ("epics:nt/NTScalar:1.0", "i"),
              "NTScalar double": ("epics:nt/NTScalar:1.0", "d"), "NTEnum": ("epics:nt/NTEnum:1.0", "S")}  # fmt: skip
    pvs = ioc_pvs()
    values = pva.get([ioc.prefix + pv.name for pv in pvs], timeout=CA_TIMEOUT)
    for pv, value in zip(pvs, values, strict=True):
        spec = value.raw.type("value").aspy()
        assert (value.raw.getID(), spec if isinstance(spec, str) else spec[0]) == served[PVA_TYPES[pv.kind]], pv.name


def test_the_phoebus_screens_open_over_pva_with_the_prefix_macro(ioc, pva):
    """`P=pva://prefix` makes every PV of the screens a PVA name: each is a `$(P)` name, served over PVA."""
    names = set()
    for screen in ("dmagic.bob", "dmagic_manual.bob"):
        text = (REPO / "opi" / screen).read_text(encoding="utf-8")
        assert set(re.findall(r"<pv_name>(?!\$\(P\)|\$\(pv_name\))([^<]*)", text)) == set()
        names |= set(re.findall(r"<pv_name>\$\(P\)([^<]+)</pv_name>", text))
    assert "<P>$(P)</P>" in (REPO / "opi" / "dmagic.bob").read_text(encoding="utf-8")  # the manual screen's too
    values = pva.get([ioc.prefix + name for name in sorted(names)], timeout=CA_TIMEOUT)
    assert len(values) == len(names) > 40


async def test_ophyd_async_reads_and_writes_signals_and_runs_commands_over_pva(ioc):
    pytest.importorskip("ophyd_async", reason="the bluesky extra is not installed")
    from dmagic_ioc.bluesky import Command, CommandFailed
    from ophyd_async.core import init_devices
    from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

    prefix = "pva://" + ioc.prefix
    async with init_devices():
        status = epics_signal_r(str, prefix + "Status")
        busy = epics_signal_r(bool, prefix + "Busy")
        offset = epics_signal_rw(float, prefix + "TimeOffsetDays")
        delete = Command(prefix + "Delete", status)
    assert await status.get_value() == ioc.get("Status") and await busy.get_value() is False
    await offset.set(3.5)
    assert ioc.get("TimeOffsetDays") == 3.5
    described = (await offset.describe())[offset.name]
    assert described["units"] == "d" and described["limits"]["control"] == {"low": -3660.0, "high": 3660.0}
    with pytest.raises(CommandFailed) as failed:
        await delete.set(1)  # nothing selected: the IOC refuses, Status says why
    assert failed.value.status == ioc.get("Status") and ioc.severity("Status") == MAJOR
