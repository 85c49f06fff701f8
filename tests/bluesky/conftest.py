"""Bluesky against the installed IOC: a RunEngine per test, and the IOC's experiments made through its PVs.

The IOC comes from `tests/e2e/fixtures.py` (`ioc`: a fresh one per test, on the session's loopback
port). Nothing of the bluesky extra is imported here at import time: the test modules skip themselves
(`pytest.importorskip`) when it is not installed.
"""

from __future__ import annotations

import pytest

from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import IOC

PROPOSAL_EXPERIMENT = "2026-11-DArcy-1013377"  # the second beamtime's experiment; D'Arcy is its PI
MANUAL = {  # a manual experiment whose person is not ASCII: the text PVs must read back as UTF-8
    "Manual:FirstName": "Zoë",
    "Manual:LastName": "Müller-Łukasiewicz",
    "Manual:Institution": "Universität Beispielstadt",
    "Manual:Title": "Schaumalterung in 4D — Vorversuch",
    "Manual:GUP": 77,
    "Manual:Start": "2026-11-02",
}
MANUAL_EXPERIMENT = "2026-11-MullerLukasiewicz-77"
MANUAL_ARGUMENTS = {  # the same experiment, as `plans.create_manual` takes it
    "first_name": MANUAL["Manual:FirstName"],
    "last_name": MANUAL["Manual:LastName"],
    "institution": MANUAL["Manual:Institution"],
    "title": MANUAL["Manual:Title"],
    "gup": MANUAL["Manual:GUP"],
    "start": MANUAL["Manual:Start"],
}


@pytest.fixture
def RE():
    """A RunEngine on an event loop of its own; the CA channels of the test closed at the end."""
    from aioca import purge_channel_caches
    from bluesky import RunEngine
    from bluesky.run_engine import call_in_bluesky_event_loop

    engine = RunEngine({})
    yield engine

    async def purge() -> None:  # on the loop's thread, which has the CA context
        purge_channel_caches()

    call_in_bluesky_event_loop(purge())
    engine.loop.call_soon_threadsafe(engine.loop.stop)


def look_at_second_beamtime(ioc: IOC) -> None:
    """Make the schedule's current beamtime the second one (D'Arcy's), so that Create makes its experiment."""
    ioc.put("TimeOffsetDays", IN_SECOND)
    status, severity = ioc.command("Refresh")
    assert severity == 1 and "TimeOffsetDays" in status, status  # MINOR: the offset is said, never silent


def create_manual(ioc: IOC) -> None:
    """Create and select the manual experiment of MANUAL, through the IOC's PVs."""
    for name, value in MANUAL.items():
        ioc.put(name, value)
    status, severity = ioc.command("CreateManual")
    assert severity == 0, status
