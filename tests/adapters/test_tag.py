"""CaTag against a second caproto IOC that mimics tomoScan's user-info records.

The target IOC is this file run as a script in a subprocess, on a free port
of 127.0.0.1 with a random prefix; every EPICS address variable is pinned to
loopback for it and for the client.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty
from caproto.threading.client import Context, SharedBroadcaster
from dmagic_ioc.adapters.tag import CaTag, encode_for, fit_utf8
from dmagic_ioc.ioc.model import TagError

STRING_NAMES = (
    "UserName",
    "UserLastName",
    "UserEmail",
    "UserBadge",
    "UserInfoUpdate",
    "ProposalNumber",
    "ESAFNumber",
    "ESAFDOINumber",
    "ExperimentYearMonth",
)
ARRAY_NAMES = ("UserInstitution", "ProposalTitle")
TAG_NAMES = STRING_NAMES + ARRAY_NAMES


def _string(doc: str):
    return pvproperty(value="", dtype=ChannelType.STRING, string_encoding="utf-8", doc=doc)


def _array(doc: str):
    return pvproperty(value="", dtype=ChannelType.CHAR, max_length=256, string_encoding="utf-8", doc=doc)


class TomoScanUserInfo(PVGroup):
    """The user-info records of tomoScan: 40-byte strings and two 256-byte char arrays."""

    UserName = _string("PI first name")
    UserLastName = _string("PI last name")
    UserEmail = _string("PI e-mail")
    UserBadge = _string("PI badge")
    UserInfoUpdate = _string("time of the last update")
    ProposalNumber = _string("GUP number")
    ESAFNumber = _string("ESAF number")
    ESAFDOINumber = _string("ESAF DOI")
    ExperimentYearMonth = _string("YYYY-MM")
    UserInstitution = _array("PI institution")
    ProposalTitle = _array("proposal title")
    Locked = pvproperty(value="", dtype=ChannelType.STRING, read_only=True, doc="a record clients cannot write")
    Refusing = _string("a record whose puts fail")
    ScanCount = pvproperty(value=0, dtype=ChannelType.LONG, doc="a numeric record")

    @Refusing.putter
    async def Refusing(self, instance, value):
        raise ValueError("refused by the test IOC")


# --------------------------------------------------------------------------
# Fixtures


def free_port() -> int:
    """A port free for both UDP (CA search) and TCP (CA circuits) on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def loopback_env(server_port: int, repeater_port: int) -> dict[str, str]:
    return {
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{server_port}",
        "EPICS_CA_NAME_SERVERS": "",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CAS_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    }


@pytest.fixture(scope="module")
def epics_env():
    """Pin every EPICS address variable to loopback for this module's clients."""
    env = loopback_env(free_port(), free_port())
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(scope="module")
def reader(epics_env):
    """A CA client of the test's own, to read what Tag wrote."""
    context = Context(SharedBroadcaster(), timeout=5.0)
    yield context
    context.disconnect()


@pytest.fixture(scope="module")
def target(epics_env, reader, tmp_path_factory):
    """The tomoScan look-alike IOC in a subprocess; yields its prefix once a PV answers."""
    prefix = f"tag{uuid.uuid4().hex[:8]}:TomoScan:"
    output = tmp_path_factory.mktemp("target-ioc") / "ioc.log"
    with output.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--prefix", prefix],
            env={**os.environ, **epics_env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until_serving(reader, prefix + "UserName", process, output)
        yield prefix
    finally:
        stop(process)


def wait_until_serving(context: Context, pv_name: str, process: subprocess.Popen, output: Path) -> None:
    """Poll a PV of the target until it reads; fail early if the process died."""
    (pv,) = context.get_pvs(pv_name, timeout=0.25)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            pytest.fail(f"target IOC exited with {process.returncode}:\n{output.read_text(errors='replace')}")
        context.broadcaster.search_now()  # search again now rather than after the client's back-off
        try:
            pv.read(timeout=0.25)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                pytest.fail(f"target IOC did not serve {pv_name} within 20 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def make_tag(epics_env):
    """CaTag instances whose context factory counts the contexts they ask for; closed at teardown."""
    made = []

    def make(connect_timeout: float = 2.0, put_timeout: float = 2.0) -> CaTag:
        created = []

        def factory() -> Context:
            created.append(Context(SharedBroadcaster()))
            return created[-1]

        adapter = CaTag(connect_timeout=connect_timeout, put_timeout=put_timeout, context_factory=factory)
        adapter.created = created
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


@pytest.fixture
def tag(make_tag) -> CaTag:
    return make_tag()


def read_text(context: Context, pv_name: str) -> str:
    """The PV's value as text, decoded as UTF-8 (strict: a split character fails the test)."""
    (pv,) = context.get_pvs(pv_name, timeout=5.0)
    response = pv.read(timeout=5.0)
    if response.data_type in (ChannelType.STRING, ChannelType.TIME_STRING):
        return response.data[0].decode("utf-8")
    raw = bytes(response.data)
    return raw.split(b"\0", 1)[0].decode("utf-8")


def sample_values() -> dict[str, str]:
    return {
        "UserName": "Mei",
        "UserLastName": "Li",
        "UserEmail": "mei.li@example.edu",
        "UserBadge": "310001",
        "UserInfoUpdate": "2026-10-14T09:30:00-05:00",
        "ProposalNumber": "1012039",
        "ESAFNumber": "281001",
        "ESAFDOINumber": "10.1234/esaf.281001",
        "ExperimentYearMonth": "2026-10",
        "UserInstitution": "Example State University",
        "ProposalTitle": (
            "Operando X-ray tomography of lithium dendrite growth in solid-state batteries under fast charging"
        ),
    }


# --------------------------------------------------------------------------
# Pure encoding


@pytest.mark.parametrize(
    ("text", "limit", "expected", "cut"),
    [
        ("abc", 39, b"abc", False),
        ("a" * 39, 39, b"a" * 39, False),
        ("a" * 40, 39, b"a" * 39, True),
        ("a" * 38 + "é", 39, b"a" * 38, True),  # é is 2 bytes: it would need 40
        ("a" * 37 + "é", 39, b"a" * 37 + "é".encode(), False),
        ("€" * 14, 39, "€".encode() * 13, True),  # 3-byte characters: 13 fit in 39
        ("😀" * 10, 39, "😀".encode() * 9, True),
        ("", 39, b"", False),
        ("é", 0, b"", True),
    ],
)
def test_fit_utf8_cuts_at_a_character_boundary(text, limit, expected, cut):
    assert fit_utf8(text, limit) == (expected, cut)


def test_encode_for_string_and_char_targets():
    assert encode_for("Zoë", ChannelType.STRING, 1) == (["Zoë".encode()], ChannelType.STRING, 1, False)
    payload, data_type, count, cut = encode_for("ü" * 200, ChannelType.CHAR, 256)
    assert (data_type, count, cut) == (ChannelType.CHAR, 255, True)
    assert payload == "ü".encode() * 127 + b"\0"
    assert encode_for("", ChannelType.CHAR, 256) == (b"\0", ChannelType.CHAR, 1, False)
    assert encode_for("7", ChannelType.LONG, 1) == ([b"7"], ChannelType.STRING, 1, False)


# --------------------------------------------------------------------------
# Against the target IOC


def test_values_land_in_the_target(tag, target, reader):
    values = sample_values()
    assert tag.write(target, values) == []
    for name, value in values.items():
        assert read_text(reader, target + name) == value, name


def test_long_and_non_ascii_values_are_cut_and_reported(tag, target, reader):
    values = sample_values()
    values["UserLastName"] = "Müller-Łukasiewicz-Ødegård-Sørensen-Ñúñez"  # > 39 bytes in UTF-8
    values["UserName"] = "Zoë"  # non-ASCII that fits
    values["UserEmail"] = "a" * 39  # exactly fits: not cut
    values["ProposalTitle"] = "Ω-phase " * 40  # 360 bytes into 255
    values["UserInstitution"] = "Universität " + "€" * 100

    cut = tag.write(target, values)

    assert sorted(cut) == ["ProposalTitle", "UserInstitution", "UserLastName"]
    for name in ("UserLastName", "ProposalTitle", "UserInstitution"):
        landed = read_text(reader, target + name)
        limit = 39 if name in STRING_NAMES else 255
        assert values[name].startswith(landed)
        assert limit - 3 < len(landed.encode()) <= limit  # cut only as far as a whole character needs
    assert read_text(reader, target + "UserName") == "Zoë"
    assert read_text(reader, target + "UserEmail") == "a" * 39


def test_missing_target_pv_fails_naming_it_and_writes_nothing(make_tag, target, reader):
    tag = make_tag(connect_timeout=1.0)
    tag.write(target, sample_values())
    values = {name: "CHANGED" for name in TAG_NAMES}
    values["NoSuchRecord"] = "x"

    with pytest.raises(TagError) as raised:
        tag.write(target, values)

    message = str(raised.value)
    assert f"{target}NoSuchRecord" in message
    assert "nothing written" in message
    assert "UserName" not in message
    for name, value in sample_values().items():
        assert read_text(reader, target + name) == value, name


def test_wrong_prefix_names_the_prefix(make_tag, target):
    tag = make_tag(connect_timeout=1.0)
    prefix = f"nowhere{uuid.uuid4().hex[:6]}:"
    with pytest.raises(TagError) as raised:
        tag.write(prefix, sample_values())
    assert str(raised.value) == (
        f"tag: no PV under {prefix} answered within 1 s (is that IOC running and TagPrefix right?); nothing written"
    )


def test_several_missing_pvs_are_all_named(make_tag, target):
    tag = make_tag(connect_timeout=1.0)
    with pytest.raises(TagError) as raised:
        tag.write(target, {"UserName": "a", "Missing1": "b", "Missing2": "c"})
    assert str(raised.value) == (f"tag: no answer within 1 s from {target}Missing1, {target}Missing2; nothing written")


def test_read_only_target_writes_nothing(tag, target, reader):
    tag.write(target, {"UserBadge": "310001"})
    with pytest.raises(TagError, match=f"no write access to {target}Locked; nothing written"):
        tag.write(target, {"UserBadge": "999999", "Locked": "x"})
    assert read_text(reader, target + "UserBadge") == "310001"


def test_failed_put_names_the_pv(make_tag, target):
    tag = make_tag(put_timeout=1.0)  # caproto's threading client learns of a failed put only by its timeout
    with pytest.raises(TagError) as raised:
        tag.write(target, {"UserBadge": "310001", "Refusing": "x"})
    assert f"{target}Refusing" in str(raised.value)
    assert "1 of 2 values were written before it" in str(raised.value)


def test_numeric_target_takes_the_value_as_a_string_put(tag, target, reader):
    assert tag.write(target, {"ScanCount": "42"}) == []
    (pv,) = reader.get_pvs(target + "ScanCount", timeout=5.0)
    assert pv.read(timeout=5.0).data[0] == 42


def test_one_context_is_created_and_reused(tag, target):
    tag.write(target, {"UserBadge": "1"})
    tag.write(target, {"UserBadge": "2"})
    assert len(tag.created) == 1


def test_empty_values_touch_nothing(tag):
    assert tag.write("any:", {}) == []
    assert tag.created == []


def test_empty_prefix_is_refused_before_any_network(tag):
    with pytest.raises(TagError, match="TagPrefix is empty"):
        tag.write(" ", {"UserName": "Mei"})
    assert tag.created == []


# --------------------------------------------------------------------------
# The target IOC, run by the `target` fixture as `python test_tag.py --prefix P`

if __name__ == "__main__":
    from caproto.server import run

    parser = argparse.ArgumentParser(description="tomoScan user-info look-alike for the Tag tests")
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    run(TomoScanUserInfo(prefix=args.prefix).pvdb, interfaces=["127.0.0.1"])
