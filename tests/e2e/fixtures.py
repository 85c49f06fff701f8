"""End-to-end fixtures: a beamline schedule with fixed dates, and IOCs started on it.

Registered for the whole suite by `pytest_plugins` in `tests/conftest.py` (tests/e2e and tests/faults use them);
test modules import the schedule and its moments from here.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from .harness import IOC, base_config, write_schedule

# Mirrors run 2026-3 of the APS fixtures: three beamtimes, fixed dates (Chicago time).
SCHEDULE = {
    "runs": [{"name": "2026-3", "start": "2026-09-29T08:00:00-05:00", "end": "2026-12-22T08:00:00-06:00"}],
    "beamtimes": [
        {"gup": 1012039, "title": "Operando X-ray tomography of lithium dendrite growth in solid-state batteries "
         "under fast charging", "type": "General User", "start": "2026-10-14T08:00:00-05:00",
         "end": "2026-10-17T08:00:00-0500", "esaf": 281001, "people": [
             {"badge": 310001, "first_name": "Mei", "last_name": "Li", "email": "mei.li@example.edu",
              "institution": "Example State University", "pi": True},
             {"badge": 310002, "first_name": "Tomas", "last_name": "Novak", "email": "t.novak@example.org",
              "institution": "Institute of Example Materials"},
             {"badge": 310003, "first_name": "Amara", "last_name": "Okafor",
              "institution": "Example National Laboratory"}]},
        {"gup": 1013377, "title": "Fast 4D imaging of foam coarsening", "type": "General User",
         "start": "2026-11-18 08:00", "end": "2026-11-25 08:00", "mail_in": True, "esaf": 281002, "people": [
             {"badge": 310010, "first_name": "Zoë", "last_name": "Müller-Łukasiewicz",
              "email": "zoe.mueller@example.de", "institution": "Universität Beispielstadt"},
             {"badge": 310011, "first_name": "Jean-Luc", "last_name": "D'Arcy", "email": "jl.darcy@example.fr",
              "institution": "Laboratoire Exemple", "pi": True},
             {"badge": 310012, "first_name": "Sven", "last_name": "Øberg", "email": "sven.oberg@example.se",
              "institution": "Exempel University"}]},
        {"gup": 1014002, "title": "Commissioning of the new fast camera", "type": "Staff",
         "start": "2026-12-01T08:00:00-06:00", "end": "2026-12-04T08:00:00-06:00", "people": [
             {"badge": 100001, "first_name": "Ada", "last_name": "Staff", "email": "ada.staff@example.gov",
              "institution": "Example Light Source"},
             {"badge": 100002, "first_name": "Bo", "last_name": "Tech", "institution": "Example Light Source"}]},
    ],
}  # fmt: skip


def offset_to(iso_moment: str) -> float:
    """TimeOffsetDays that makes the IOC look at `iso_moment`, whatever today is."""
    moment = datetime.fromisoformat(iso_moment)
    return (moment - datetime.now(timezone.utc)).total_seconds() / 86400


IN_FIRST = offset_to("2026-10-15T12:00:00-05:00")
IN_SECOND = offset_to("2026-11-20T12:00:00-06:00")
IN_THIRD = offset_to("2026-12-02T12:00:00-06:00")
BETWEEN = offset_to("2026-11-01T12:00:00-05:00")


@pytest.fixture
def schedule_path(tmp_path):
    return write_schedule(tmp_path, SCHEDULE)


@pytest.fixture
def config(tmp_path, schedule_path):
    return base_config(tmp_path, schedule_path)


@pytest.fixture
def ioc(config, tmp_path):
    with IOC(config, tmp_path) as running:
        yield running
