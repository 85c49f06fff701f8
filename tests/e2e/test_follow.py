"""The experiment follows the beam: the proposal PVs describe the experiment data goes to, `Schedule:*`
what the schedule shows now, and with `dm.follow_schedule` a new beamtime selects its experiment by itself."""

from __future__ import annotations

import json

import pytest

from .fixtures import BETWEEN, IN_SECOND, IN_THIRD
from .harness import IOC

pytestmark = pytest.mark.e2e

NO_ALARM, MINOR, MAJOR = 0, 1, 2
SECOND = "2026-11-DArcy-1013377"
THIRD = "2026-12-Staff-1014002"


def refresh_at(ioc: IOC, offset: float) -> tuple[str, int]:
    ioc.put("TimeOffsetDays", offset)
    return ioc.command("Refresh")


def test_the_proposal_pvs_stay_with_the_selection_and_the_next_beamtime_is_announced(ioc):
    refresh_at(ioc, IN_SECOND)
    status, severity = ioc.command("Create")
    assert severity == NO_ALARM, status
    assert ioc.get("ExperimentName") == SECOND

    status, severity = refresh_at(ioc, IN_THIRD)  # the next beamtime starts
    assert severity == MINOR and "1014002" in status and "Ada Staff" in status, status
    assert ioc.get("ProposalNumber") == "1013377" and ioc.get("UserLastName") == "D'Arcy"
    assert ioc.get("Users:Names") == "Jean-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg"
    assert ioc.get("Schedule:ProposalNumber") == "1014002" and ioc.get("Schedule:PI") == "Ada Staff"
    assert ioc.get("ProposalActive") == "Yes"  # a beamtime is scheduled now, whichever is selected
    assert ioc.get("Schedule:Differs") == "Yes" and ioc.severity("Schedule:Differs") == MINOR

    status, severity = ioc.command("Create")  # the schedule's current beamtime
    assert severity == NO_ALARM, status
    assert ioc.get("ExperimentName") == THIRD
    assert ioc.get("ProposalNumber") == "1014002" and ioc.get("UserLastName") == "Staff"
    assert ioc.get("ProposalActive") == "Yes" and ioc.severity("ProposalActive") == NO_ALARM
    assert ioc.get("Schedule:Differs") == "No" and ioc.severity("Schedule:Differs") == NO_ALARM

    status, severity = refresh_at(ioc, BETWEEN)  # between beamtimes: the PVs keep the experiment's people
    assert ioc.get("ProposalNumber") == "1014002" and ioc.get("Schedule:ProposalNumber") == ""
    assert ioc.get("Users:Count") == 2


def test_a_manual_experiment_shows_its_manual_person_and_survives_a_restart(ioc):
    refresh_at(ioc, IN_SECOND)
    for name, value in {"Manual:LastName": "Øberg", "Manual:FirstName": "Sven", "Manual:Institution": "Exempel",
                        "Manual:Email": "sven@example.se", "Manual:Title": "Commissioning", "Manual:GUP": 77,
                        "Manual:Badges": "310012,310010"}.items():  # fmt: skip
        ioc.put(name, value)
    status, severity = ioc.command("CreateManual")
    assert severity == NO_ALARM, status
    names = ("UserName", "UserLastName", "UserEmail", "UserInstitution", "UserBadge", "ProposalNumber",
             "ProposalTitle", "ProposalActive")  # fmt: skip
    shown = {name: ioc.get(name) for name in names}
    assert shown == {"UserName": "Sven", "UserLastName": "Øberg", "UserEmail": "sven@example.se",
                     "UserInstitution": "Exempel", "UserBadge": "310012", "ProposalNumber": "77",
                     "ProposalTitle": "Commissioning", "ProposalActive": "Yes"}  # fmt: skip
    assert ioc.get("Schedule:ProposalNumber") == "1013377"  # the schedule is still shown beside it

    ioc.stop()
    ioc.start()
    assert ioc.get("ExperimentName").endswith("Oberg-77")
    assert {name: ioc.get(name) for name in shown} == shown  # from the registry, not from a refresh


def test_follow_schedule_selects_each_new_beamtime_once(config, tmp_path):
    config["dm"]["follow_schedule"] = True
    autosave = tmp_path / "state" / "autosave.json"  # start between beamtimes, whatever today is
    autosave.parent.mkdir(parents=True)
    autosave.write_text(json.dumps({"TimeOffsetDays": BETWEEN}))
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("ExperimentName") == ""

        status, severity = refresh_at(ioc, IN_SECOND)  # a new beamtime runs: its experiment, by itself
        assert ioc.get("LastCommand") == "Create (automatic)"
        assert severity == NO_ALARM and SECOND in status, status
        assert ioc.get("ExperimentName") == SECOND and ioc.get("ProposalNumber") == "1013377"
        assert ioc.get("EmailedUsers") == ""  # no e-mail by itself

        ioc.put("Manual:LastName", "Staff")
        ioc.command("CreateManual")  # staff choose a manual experiment on purpose during the beamtime
        manual = ioc.get("ExperimentName")
        status, severity = refresh_at(ioc, IN_SECOND)  # later refreshes of the same beamtime leave it
        assert ioc.get("ExperimentName") == manual and ioc.get("LastCommand") == "Refresh", status

        ioc.stop()
        ioc.start()  # the startup refresh, at the autosaved offset, does not switch again either
        assert ioc.get("ExperimentName") == manual and ioc.get("UserLastName") == "Staff"

        ioc.command("DaqStart")
        status, severity = refresh_at(ioc, IN_THIRD)  # the next beamtime: switched, the transfer left alone
        assert ioc.get("ExperimentName") == THIRD and ioc.get("LastCommand") == "Create (automatic)"
        assert severity == MINOR and "still runs" in status and manual in status, status
        assert ioc.get("DaqState") == "Running"
