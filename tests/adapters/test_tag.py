"""CaTag against EPICS base records: tomoScan's user-info records served by pythonSoftIOC.

The target is an EPICS base IOC in a subprocess (tests/e2e/epics_base.py) loading
tests/data/tomoscan_user_info.db, declared as tomoScan's own databases declare
those records, plus tests/data/tag_target_extras.db (a renamed record, a
numeric one, one refusing puts, one read-only through access security).

One behaviour belongs to a caproto target and not to EPICS base: a caproto
server refuses a put with a CA error message that caproto's threading client
drops, so the refusal shows only at the put timeout. That test runs this file
as a script: a caproto look-alike of the user-info records (which
tests/e2e/test_scheduling.py also starts for its Tag test).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty
from caproto.threading.client import Context, ContextDisconnectedError, SharedBroadcaster
from dmagic_ioc.adapters import tag as tag_module
from dmagic_ioc.adapters.tag import CaTag, Payload, encode_for, fit_utf8
from dmagic_ioc.ioc.domain.errors import MissingPVs, TagError

# --------------------------------------------------------------------------
# The caproto look-alike, run as `python test_tag.py --prefix P` (kept above the test imports' use)


def _string(doc: str):
    return pvproperty(value="", dtype=ChannelType.STRING, string_encoding="utf-8", doc=doc)


def _array(doc: str):
    return pvproperty(value="", dtype=ChannelType.CHAR, max_length=256, string_encoding="utf-8", doc=doc)


class TomoScanUserInfo(PVGroup):
    """A caproto look-alike of tomoScan's user-info records (40-byte strings, two 256-byte char arrays)."""

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
    Refusing = _string("a record whose puts fail")

    @Refusing.putter
    async def Refusing(self, instance, value):
        raise ValueError("refused by the test IOC")


if __name__ == "__main__":
    from caproto.server import run

    parser = argparse.ArgumentParser(description="tomoScan user-info look-alike for the Tag tests")
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    run(TomoScanUserInfo(prefix=args.prefix).pvdb, interfaces=["127.0.0.1"])
    sys.exit(0)

from ..e2e.epics_base import CAReader, IOCProcess, SoftIOC  # noqa: E402  (the script above runs without the package)
from ..helpers import TEST_DATA, free_port, wait_for  # noqa: E402

STRING_NAMES = (
    "UserName",
    "UserLastName",
    "UserEmail",
    "UserBadge",
    "UserInfoUpdate",
    "ProposalNumber",
    "ESAFNumber",
    "ExperimentYearMonth",
)
ARRAY_NAMES = ("UserInstitution", "ProposalTitle")


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """tomoScan's user-info records (and the test extras) in EPICS base; yields the prefix Tag writes to."""
    prefix = f"tag{uuid.uuid4().hex[:8]}:TomoScan:"
    p, r = prefix.split(":", 1)
    ioc = SoftIOC(
        [TEST_DATA / "tomoscan_user_info.db", TEST_DATA / "tag_target_extras.db"],
        {"P": p + ":", "R": r},
        ready_pv=prefix + "UserName",
        log_path=tmp_path_factory.mktemp("epics-base-target") / "ioc.log",
        acf=TEST_DATA / "tag_target.acf",
    )
    with ioc:
        yield prefix


@pytest.fixture(scope="module")
def reader():
    reader = CAReader()
    yield reader
    reader.close()


@pytest.fixture
def make_tag():
    """CaTag instances whose context factory keeps the contexts they ask for."""

    def make(**timeouts: float) -> CaTag:
        created = []

        def factory() -> Context:
            created.append(Context(SharedBroadcaster()))
            return created[-1]

        adapter = CaTag(**timeouts, context_factory=factory)
        adapter.created = created
        return adapter

    return make


@pytest.fixture
def tag(make_tag) -> CaTag:
    return make_tag()


def sample_values() -> dict[str, str]:
    return {
        "UserName": "Mei",
        "UserLastName": "Li",
        "UserEmail": "mei.li@example.edu",
        "UserBadge": "310001",
        "UserInfoUpdate": "2026-10-14T09:30:00-05:00",
        "ProposalNumber": "1012039",
        "ESAFNumber": "281001",
        "ExperimentYearMonth": "2026-10",
        "UserInstitution": "Example State University",
        "ProposalTitle": (
            "Operando X-ray tomography of lithium dendrite growth in solid-state batteries under fast charging"
        ),
    }


def as_stored(name: str, value: str) -> bytes:
    """What the record holds after Tag wrote `value` (that fits): a stringout its bytes, a waveform also the NUL."""
    return value.encode() + (b"\0" if name in ARRAY_NAMES else b"")


def longest_fit(text: str, limit: int) -> bytes:
    """The UTF-8 of the longest run of `text`'s first characters that fits in `limit` bytes."""
    kept = ""
    for character in text:
        if len((kept + character).encode()) > limit:
            break
        kept += character
    return kept.encode()


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
    assert encode_for("Zoë", ChannelType.STRING, 1) == Payload(["Zoë".encode()], ChannelType.STRING, 1, False)
    assert encode_for("ü" * 200, ChannelType.CHAR, 256) == Payload(
        "ü".encode() * 127 + b"\0", ChannelType.CHAR, 255, True
    )
    assert encode_for("", ChannelType.CHAR, 256) == Payload(b"\0", ChannelType.CHAR, 1, False)
    assert encode_for("", ChannelType.STRING, 1) == Payload([b""], ChannelType.STRING, 1, False)
    assert encode_for("7", ChannelType.LONG, 1) == Payload([b"7"], ChannelType.STRING, 1, False)


# --------------------------------------------------------------------------
# Against EPICS base


def test_values_land_in_the_records_as_they_take_them(tag, target, reader):
    values = sample_values()
    assert tag.write(target, values) == []
    for name, value in values.items():
        assert reader.raw(target + name) == as_stored(name, value), name


def test_long_and_non_ascii_values_are_cut_at_a_character_boundary_and_reported(tag, target, reader):
    values = sample_values()
    values["UserName"] = "Zoë"  # non-ASCII that fits
    values["UserLastName"] = "Müller-Łukasiewicz-Ødegård-Sørensen-Ñúñez"  # 49 bytes of UTF-8 into 39
    values["UserEmail"] = "a" * 39  # exactly fits: not cut
    values["ProposalTitle"] = "a" * 254 + "é and more"  # é would take bytes 255 and 256: 254 fit
    values["UserInstitution"] = "Universität " + "€" * 100

    cut = tag.write(target, values)

    assert sorted(cut) == ["ProposalTitle", "UserInstitution", "UserLastName"]
    assert reader.raw(target + "UserName") == "Zoë".encode()
    assert reader.raw(target + "UserLastName") == longest_fit(values["UserLastName"], 39)
    assert reader.raw(target + "UserLastName") == "Müller-Łukasiewicz-Ødegård-Sørense".encode()
    assert reader.raw(target + "UserEmail") == b"a" * 39
    assert reader.raw(target + "ProposalTitle") == b"a" * 254 + b"\0"
    institution = reader.raw(target + "UserInstitution")
    assert institution == longest_fit(values["UserInstitution"], 255) + b"\0"
    assert institution == ("Universität " + "€" * 80).encode() + b"\0"  # 13 + 240 bytes: the 81st € needs 3 more


def test_an_empty_value_clears_the_records(tag, target, reader):
    tag.write(target, sample_values())
    tag.write(target, {"UserEmail": "", "ProposalTitle": "", "UserInstitution": ""})
    assert reader.raw(target + "UserEmail") == b""
    assert reader.raw(target + "ProposalTitle") == b"\0"  # NORD 1: what `caget -S` and pyepics read as ""
    assert reader.text(target + "UserInstitution") == ""


def test_missing_pv_is_named_and_nothing_is_written(tag, target, reader):
    tag.write(target, sample_values())
    values = {name: "CHANGED" for name in sample_values()}
    values["NoSuchRecord"] = "x"

    started = time.monotonic()
    with pytest.raises(MissingPVs) as raised:
        tag.write(target, values)
    waited = time.monotonic() - started

    assert raised.value.missing == ("NoSuchRecord",)
    message = str(raised.value)
    assert f"{target}NoSuchRecord" in message and message.endswith("nothing written")
    assert "UserName" not in message
    assert waited < 2.5, f"a PV missing beside answering ones is known after the settle time, not {waited:.2f} s"
    for name, value in sample_values().items():
        assert reader.raw(target + name) == as_stored(name, value), name


def test_no_pv_answering_names_the_prefix(make_tag):
    tag = make_tag(connect_timeout=1.0)
    prefix = f"nowhere{uuid.uuid4().hex[:6]}:"
    with pytest.raises(MissingPVs) as raised:
        tag.write(prefix, sample_values())
    assert str(raised.value) == (
        f"no PV under {prefix} answered within 1 s (is that IOC running and TagPrefix right?); nothing written"
    )
    assert set(raised.value.missing) == set(sample_values())


def test_read_only_record_writes_nothing(tag, target, reader):
    tag.write(target, {"UserBadge": "310001"})
    with pytest.raises(TagError, match=f"no write access to {target}Locked; nothing written"):
        tag.write(target, {"UserBadge": "999999", "Locked": "x"})
    assert reader.raw(target + "UserBadge") == b"310001"
    assert reader.raw(target + "Locked") == b"locked"


def test_a_refused_put_fails_at_once_naming_the_pv(tag, target, reader):
    started = time.monotonic()
    with pytest.raises(TagError) as raised:
        tag.write(target, {"UserBadge": "310002", "Refusing": "x"})
    took = time.monotonic() - started
    assert (
        str(raised.value) == f"{target}Refusing refused the value (ECA_PUTFAIL); 1 of 2 values were written before it"
    )
    assert took < 1.0, f"EPICS base answers a refused put at once; took {took:.2f} s"
    assert reader.raw(target + "UserBadge") == b"310002"


def test_numeric_record_takes_the_value_as_a_string_put(tag, target, reader):
    assert tag.write(target, {"ScanCount": "42"}) == []
    assert reader.pv(target + "ScanCount").read().data[0] == 42


def closed(context: Context) -> bool:
    """The context was disconnected: its search socket is closed (no search outlives it)."""
    return context.broadcaster.udp_sock is None


def test_a_stock_tomoscan_is_told_from_a_full_target_by_one_search(tag, target, reader):
    """tomoScan has no ESAFDOINumber: the write naming it is refused (nothing written, ESAFDOINumber missing),
    and the write of the others, as the Tag command makes it next, goes through the same connected PVs."""
    values = {**sample_values(), "ESAFDOINumber": "10.0000/doi"}

    with pytest.raises(MissingPVs) as raised:
        tag.write(target, {name: "CHANGED" for name in values})
    assert raised.value.missing == ("ESAFDOINumber",)
    del values["ESAFDOINumber"]
    assert tag.write(target, values) == []

    assert len(tag.created) == 1  # one search, one circuit for both writes
    for name, value in values.items():
        assert reader.raw(target + name) == as_stored(name, value), name
    wait_for(lambda: closed(tag.created[0]), timeout=5, what="the context closed after the second write")


def test_a_context_kept_for_a_write_that_never_comes_is_closed(tag, target, monkeypatch):
    monkeypatch.setattr(tag_module, "KEEP_SECONDS", 0.05)
    with pytest.raises(MissingPVs):
        tag.write(target, {"UserBadge": "1", "NoSuchRecord": "x"})
    (kept,) = tag.created
    wait_for(lambda: closed(kept), timeout=5, what="the kept context closed")

    assert tag.write(target, {"UserBadge": "2"}) == []
    assert len(tag.created) == 2  # a fresh context: the kept one was gone


def test_a_context_kept_for_one_prefix_is_not_used_for_another(make_tag, target):
    tag = make_tag(connect_timeout=0.5)
    with pytest.raises(MissingPVs):
        tag.write(target, {"UserBadge": "1", "NoSuchRecord": "x"})
    with pytest.raises(MissingPVs):  # another prefix: no PV answers there
        tag.write(f"elsewhere{uuid.uuid4().hex[:6]}:", {"UserBadge": "1"})

    assert len(tag.created) == 2
    for context in tag.created:
        wait_for(lambda context=context: closed(context), timeout=5, what="both contexts closed")


def test_each_write_has_its_own_context_closed_after_it(tag, target):
    tag.write(target, {"UserBadge": "1"})
    tag.write(target, {"UserBadge": "2"})
    assert len(tag.created) == 2
    for context in tag.created:  # no search (for a missing PV, say) outlives the write
        wait_for(lambda context=context: closed(context), timeout=5, what="the context closed")
        with pytest.raises(ContextDisconnectedError):
            context.get_pvs(target + "UserBadge")


def test_empty_values_touch_nothing(tag):
    assert tag.write("any:", {}) == []
    assert tag.created == []


def test_empty_prefix_is_refused_before_any_network(tag):
    with pytest.raises(TagError, match="TagPrefix is empty"):
        tag.write(" ", {"UserName": "Mei"})
    assert tag.created == []


# --------------------------------------------------------------------------
# Against a caproto server: what EPICS base does not show


@pytest.fixture
def caproto_target(tmp_path, monkeypatch):
    """The look-alike above on a port of its own, which the client's address list gets for this test."""
    port = free_port()
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"{os.environ['EPICS_CA_ADDR_LIST']} 127.0.0.1:{port}")
    prefix = f"cap{uuid.uuid4().hex[:8]}:TomoScan:"
    command = [sys.executable, str(Path(__file__).resolve()), "--prefix", prefix]
    with IOCProcess(command, prefix + "UserName", tmp_path / "caproto-target.log", server_port=port):
        yield prefix


def test_a_caproto_targets_refusal_shows_only_at_the_put_timeout(make_tag, caproto_target):
    tag = make_tag(put_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TagError) as raised:
        tag.write(caproto_target, {"UserBadge": "310001", "Refusing": "x"})
    took = time.monotonic() - started
    assert str(raised.value) == (
        f"{caproto_target}Refusing did not confirm the put within 1 s (refused, or its IOC is stalled); "
        "1 of 2 values were written before it"
    )
    assert took >= 1.0  # caproto's threading client drops the server's error reply (caproto 1.3)
