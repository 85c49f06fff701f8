"""One bad value from the schedule affects that value alone: through the installed IOC, read over CA.

The schedule's current beamtime holds an e-mail with CR/LF, one with a comma, a first name with control
characters and a 10 MB title. Refresh cleans each on its own and names it on Status (MINOR); the list PVs
stay unambiguous; Email reaches the users whose address is plain. The mailer refuses an address with a
line break that reaches it another way (a manual experiment's) as a second line of defence.
"""

from __future__ import annotations

import copy

import pytest

from ..helpers import wait_for
from .fixtures import IN_SECOND, SCHEDULE
from .harness import IOC, base_config, write_schedule
from .test_daq_email import inbox  # noqa: F401  (the SMTP server on loopback, a fixture)

pytestmark = pytest.mark.e2e

MINOR, MAJOR = 1, 2
NAME = "2026-11-DArcy-1013377"
TITLE = "Fast 4D imaging of foam coarsening " + "x" * 10_000_000


def schedule_with_bad_values() -> dict:
    schedule = copy.deepcopy(SCHEDULE)
    beamtime = schedule["beamtimes"][1]  # 1013377, at IN_SECOND
    beamtime["title"] = TITLE
    zoe, jean_luc, sven = beamtime["people"]
    zoe["email"] = "zoe.mueller@example.de\r\nBcc: everyone@example.org"
    sven["email"] = "sven.oberg@example.se,eve@example.com"
    jean_luc["first_name"] = "Jean\x1b[2J-Luc\x07"
    beamtime["people"].append(
        {"badge": 310013, "first_name": "Inês", "last_name": "Costa", "email": "ines.costa@example.pt"}
    )
    return schedule


@pytest.fixture
def ioc(tmp_path, inbox):  # noqa: F811
    config = base_config(tmp_path, write_schedule(tmp_path, schedule_with_bad_values()))
    config["email"] = {"enabled": True, "smtp_host": "127.0.0.1", "smtp_port": inbox[1], "sender": "2bm@example.gov"}
    with IOC(config, tmp_path) as running:
        yield running


def recipients(handler) -> list[list[str]]:
    return [rcpts for rcpts, _ in handler.messages]


def test_each_bad_value_is_cleaned_and_named_and_the_other_users_get_their_email(ioc, inbox):  # noqa: F811
    handler, _ = inbox
    ioc.put("TimeOffsetDays", IN_SECOND)
    status, severity = ioc.command("Refresh")
    assert severity == MINOR, status
    assert status.startswith("proposal 1013377 (D'Arcy), run 2026-3; from the schedule: title cut to 1023 bytes")
    for named in (
        "e-mail of Zoë Müller-Łukasiewicz (310010) dropped (a line break)",
        "e-mail of Sven Øberg (310012) dropped (a comma)",
        "first name of Jean[2J-Luc D'Arcy (310011) cleaned of control characters",
    ):
        assert named in status
    assert ioc.get("Users:Count") == 4
    assert ioc.get("Users:Names") == "Jean[2J-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg,Inês Costa"
    assert ioc.get("Users:Badges") == "310011,310010,310012,310013"
    assert ioc.get("Users:Emails") == "jl.darcy@example.fr,,,ines.costa@example.pt"
    assert (ioc.get("UserName"), ioc.get("UserEmail")) == ("Jean[2J-Luc", "jl.darcy@example.fr")
    title = ioc.get("ProposalTitle")
    assert title == TITLE.encode("utf-8")[:1023].decode("utf-8")

    status, severity = ioc.command("Create")
    assert severity == 0 and ioc.get("ExperimentName") == NAME, status
    status, severity = ioc.command("Email")
    assert severity == MINOR, status
    assert status.startswith(f"e-mailed 2 users of {NAME}; no address: d310010, d310012")
    assert sorted(r for rcpts in recipients(handler) for r in rcpts) == ["ines.costa@example.pt", "jl.darcy@example.fr"]
    assert all(len(rcpts) == 1 for rcpts in recipients(handler))
    assert sorted(ioc.get("EmailedUsers").split(",")) == ["d310011", "d310013"]

    status, severity = ioc.command("Refresh")  # asked again: said again
    assert severity == MINOR and "e-mail of Sven Øberg (310012) dropped (a comma)" in status
    beat = ioc.get("Heartbeat")  # and the IOC lives on: the next tick comes
    wait_for(lambda: ioc.get("Heartbeat") > beat, what="the next Heartbeat")


def test_the_mailer_refuses_an_address_with_a_line_break_naming_it(ioc, inbox):  # noqa: F811
    handler, _ = inbox
    ioc.put("Manual:LastName", "Visser")
    ioc.put("Manual:Email", "anouk@example.nl\r\nBcc: everyone@example.org")
    ioc.put("Manual:Badges", "310020")
    status, severity = ioc.command("CreateManual")
    assert severity == 0, status
    status, severity = ioc.command("Email")
    assert severity == MAJOR, status  # nobody could be e-mailed
    assert "failed: d310020 (anouk@example.nl\\r\\nBcc: everyone@example.org is not one plain e-mail address" in status
    assert recipients(handler) == [] and ioc.get("EmailedUsers") == ""
    assert ioc.get("Email:Health") == "OK"  # the server was not at fault
