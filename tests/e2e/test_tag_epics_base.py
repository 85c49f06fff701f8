"""Tag through the installed IOC into tomoScan's user-info records served by EPICS base (pythonSoftIOC).

The target loads tests/data/tomoscan_user_info.db, declared as tomoScan's own
databases declare those records (stringout; waveform FTVL CHAR NELM 256),
with or without an ESAFDOINumber record (tests/data/tomoscan_esaf_doi.db).
TagPrefix is set over Channel Access, Tag runs with put completion, and the
records are read back as bytes with caproto's client.
"""

from __future__ import annotations

import time
import uuid

import pytest

from ..helpers import TEST_DATA, wait_for
from .epics_base import CAReader, SoftIOC
from .fixtures import offset_to
from .harness import IOC, base_config, write_schedule

pytestmark = pytest.mark.e2e

NO_ALARM, MINOR, MAJOR = 0, 1, 2
TITLE = "A" * 254 + "é: in situ tomography of foam coarsening"  # é would take bytes 255 and 256 of 256
EMAIL = "zoe.mueller-lukasiewicz@universitaet-beispielstadt.example.de"  # 61 bytes into a 40-byte stringout
SCHEDULE = {
    "runs": [{"name": "2026-3", "start": "2026-09-29T08:00:00-05:00", "end": "2026-12-22T08:00:00-06:00"}],
    "beamtimes": [
        {"gup": 1013377, "title": TITLE, "type": "General User", "start": "2026-11-18T08:00:00-06:00",
         "end": "2026-11-25T08:00:00-06:00", "esaf": 281002, "people": [
             {"badge": 310010, "first_name": "Zoë", "last_name": "Müller-Łukasiewicz", "email": EMAIL,
              "institution": "Universität Beispielstadt", "pi": True},
             {"badge": 310011, "first_name": "Jean-Luc", "last_name": "D'Arcy", "email": "jl.darcy@example.fr"}]},
        {"gup": 1014002, "title": "Commissioning of the new fast camera", "type": "Staff",
         "start": "2026-12-01T08:00:00-06:00", "end": "2026-12-04T08:00:00-06:00", "people": [
             {"badge": 100002, "first_name": "Bo", "last_name": "Tech", "pi": True}]},
    ],
}  # fmt: skip
IN_ZOES = offset_to("2026-11-20T12:00:00-06:00")
IN_BOS = offset_to("2026-12-02T12:00:00-06:00")


@pytest.fixture
def schedule_path(tmp_path):
    return write_schedule(tmp_path, SCHEDULE)


@pytest.fixture
def reader():
    reader = CAReader()
    yield reader
    reader.close()


def tomoscan(tmp_path, *extra_databases) -> tuple[SoftIOC, str]:
    """tomoScan's user-info records (and `extra_databases`) in EPICS base; (the IOC, the prefix Tag writes to)."""
    ioc_prefix = f"ts{uuid.uuid4().hex[:8]}:"
    ioc = SoftIOC(
        [TEST_DATA / "tomoscan_user_info.db", *extra_databases],
        {"P": ioc_prefix, "R": "TomoScan:"},
        ready_pv=f"{ioc_prefix}TomoScan:UserName",
        log_path=tmp_path / f"tomoscan-{ioc_prefix[:-1]}.log",
        acf=TEST_DATA / "tag_target.acf",
    )
    return ioc, f"{ioc_prefix}TomoScan:"


def tag_at(ioc: IOC, offset: float, target: str) -> tuple[str, int]:
    """Refresh at `offset` days (MINOR: the offset is said), set TagPrefix over CA, run Tag with put
    completion: (Status, its severity)."""
    ioc.put("TimeOffsetDays", offset)
    status, severity = ioc.command("Refresh")
    assert severity == MINOR and status.startswith("proposal ") and "TimeOffsetDays is" in status, status
    ioc.put("TagPrefix", target)
    return ioc.command("Tag")


@pytest.mark.parametrize("with_doi", [False, True], ids=["stock tomoScan", "with ESAFDOINumber"])
def test_tag_writes_tomoscan_records_in_the_form_each_takes(tmp_path, schedule_path, reader, with_doi):
    target_ioc, target = tomoscan(tmp_path, *([TEST_DATA / "tomoscan_esaf_doi.db"] if with_doi else []))
    with target_ioc, IOC(base_config(tmp_path, schedule_path), tmp_path) as ioc:
        if with_doi:
            reader.write(target + "ESAFDOINumber", "10.0000/left-over")

        status, severity = tag_at(ioc, IN_ZOES, target)

        assert (status, severity) == (
            f"tagged {target} with proposal 1013377; cut to fit the target: UserEmail, ProposalTitle",
            MINOR,
        )
        assert reader.raw(target + "UserName") == "Zoë".encode()
        assert reader.raw(target + "UserLastName") == "Müller-Łukasiewicz".encode()
        assert reader.raw(target + "UserEmail") == EMAIL.encode()[:39]  # ASCII: any byte is a boundary
        assert reader.raw(target + "UserBadge") == b"310010"
        assert reader.raw(target + "UserInstitution") == "Universität Beispielstadt".encode() + b"\0"
        assert reader.raw(target + "ProposalNumber") == b"1013377"
        assert reader.raw(target + "ProposalTitle") == b"A" * 254 + b"\0"  # the é is left out whole
        assert reader.raw(target + "ESAFNumber") == b"281002"
        assert reader.raw(target + "ExperimentYearMonth") == b"2026-11"
        assert reader.text(target + "UserInfoUpdate") == ioc.get("UserInfoUpdate")
        if with_doi:  # the file schedule knows no DOI: the target's is cleared, as the IOC shows it
            assert ioc.get("ESAFDOINumber") == ""
            assert reader.raw(target + "ESAFDOINumber") == b"\0"
        assert ioc.get("LastError") == ""

        # The next beamtime's PI has no e-mail or institution and the proposal no ESAF: Tag clears them.
        status, severity = tag_at(ioc, IN_BOS, target)

        assert (status, severity) == (f"tagged {target} with proposal 1014002", NO_ALARM)
        assert reader.raw(target + "UserName") == b"Bo"
        assert reader.raw(target + "UserEmail") == b""
        assert reader.raw(target + "UserInstitution") == b"\0"
        assert reader.raw(target + "ESAFNumber") == b""
        assert reader.raw(target + "ProposalTitle") == b"Commissioning of the new fast camera\0"


def test_tag_fields_rename_leave_out_and_warn_of_missing_pvs(tmp_path, schedule_path, reader):
    target_ioc, target = tomoscan(tmp_path, TEST_DATA / "tag_target_extras.db")
    config = base_config(tmp_path, schedule_path)
    config["tag"] = {"fields": {"UserBadge": "PIBadge", "ESAFNumber": None, "UserEmail": "PIEmail"}}
    with target_ioc, IOC(config, tmp_path) as ioc:
        status, severity = tag_at(ioc, IN_BOS, target)

        assert (status, severity) == (
            f"tagged {target} with proposal 1014002; not written, no such PV: {target}PIEmail",
            MINOR,
        )
        assert reader.raw(target + "PIBadge") == b"100002"
        assert reader.raw(target + "UserBadge") == b"Unknown"  # renamed: its own record is left alone
        assert reader.raw(target + "ESAFNumber") == b"Unknown"  # left out
        assert reader.raw(target + "UserEmail") == b"Unknown"  # renamed to a PV the target lacks
        assert reader.raw(target + "UserName") == b"Bo"  # the others are written
        assert reader.raw(target + "ProposalNumber") == b"1014002"


def test_no_pv_answering_fails_naming_the_prefix_and_the_ioc_keeps_serving(tmp_path, schedule_path):
    with IOC(base_config(tmp_path, schedule_path), tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_BOS)
        ioc.command("Refresh")
        nowhere = f"nowhere{uuid.uuid4().hex[:6]}:TomoScan:"
        ioc.put("TagPrefix", nowhere)

        started = time.monotonic()
        ioc.put("Tag", 1, wait=False)
        wait_for(lambda: ioc.get("Busy") == "Busy", timeout=5, interval=0.01, what="Tag running")
        reads = []  # the event loop answers while Tag waits for the target
        while ioc.get("Busy") == "Busy":
            before = time.monotonic()
            ioc.get("Heartbeat")
            reads.append(time.monotonic() - before)
        took = time.monotonic() - started

        status = ioc.get("Status")
        assert status == (
            f"Tag failed: no PV under {nowhere} answered within 3 s (is that IOC running and TagPrefix right?); "
            "nothing written"
        )
        assert ioc.severity("Status") == MAJOR
        assert ioc.get("LastError") == status
        assert 2.5 < took < 6, took
        assert len(reads) > 10 and max(reads) < 0.25, f"{len(reads)} reads, slowest {max(reads):.3f} s"


def test_after_create_manual_tag_writes_the_manual_person(tmp_path, schedule_path, reader):
    """The PVs describe the experiment data goes to: a manual one's person lands in tomoScan, not the
    schedule's PI (docs/interface.md section 5)."""
    target_ioc, target = tomoscan(tmp_path)
    with target_ioc, IOC(base_config(tmp_path, schedule_path), tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_ZOES)  # a beamtime is scheduled now: its PI must not be tagged
        ioc.command("Refresh")
        for name, value in {"Manual:FirstName": "Sven", "Manual:LastName": "Øberg", "Manual:GUP": 77,
                            "Manual:Email": "sven@example.se", "Manual:Institution": "Exempel University",
                            "Manual:Title": "Detector commissioning", "Manual:Badges": "310012"}.items():  # fmt: skip
            ioc.put(name, value)
        status, severity = ioc.command("CreateManual")
        assert severity == NO_ALARM, status
        ioc.put("TagPrefix", target)

        status, severity = ioc.command("Tag")

        assert (status, severity) == (f"tagged {target} with proposal 77", NO_ALARM)
        assert reader.raw(target + "UserName") == b"Sven"
        assert reader.raw(target + "UserLastName") == "Øberg".encode()
        assert reader.raw(target + "UserEmail") == b"sven@example.se"
        assert reader.raw(target + "UserBadge") == b"310012"
        assert reader.raw(target + "UserInstitution") == b"Exempel University\0"
        assert reader.raw(target + "ProposalTitle") == b"Detector commissioning\0"
        assert reader.raw(target + "ProposalNumber") == b"77"
