"""SchedulingSource: the YAML file schedule and FakeSchedule, holding the same runs and beamtimes, answer alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from dmagic_ioc.adapters.schedule_file import FileSchedule
from dmagic_ioc.ioc.domain.beamtime import Beamtime, Run
from dmagic_ioc.ioc.domain.errors import SchedulingError
from dmagic_ioc.ioc.domain.ports import SchedulingSource
from dmagic_ioc.ioc.domain.proposal import Proposal
from dmagic_ioc.ioc.domain.times import parse_time

from ..fakes.ports import BEAMTIME, CHICAGO, LATER, MEI, RUN, FailingSchedule, FakeSchedule

NEXT_RUN = Run("2027-1", parse_time("2027-01-26 08:00", CHICAGO), parse_time("2027-04-27 08:00", CHICAGO))
NEXT = Beamtime(
    Proposal("1013377", "Next run's proposal", people=(MEI,), proprietary=True),
    start=parse_time("2027-02-02 08:00", CHICAGO),
    end=parse_time("2027-02-04 20:00", CHICAGO),
)
RUNS, BEAMTIMES = (RUN, NEXT_RUN), (BEAMTIME, LATER, NEXT)


def local(moment) -> str:
    """A time as the beamline writes it in its schedule: local, without an offset."""
    return moment.astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M")


def schedule_file(path: Path, runs: Sequence[Run], beamtimes: Sequence[Beamtime]) -> Path:
    """The YAML schedule (`scheduling.backend: file`) holding `runs` and `beamtimes`."""
    data = {
        "runs": [{"name": run.name, "start": local(run.start), "end": local(run.end)} for run in runs],
        "beamtimes": [
            {
                "gup": beamtime.gup,
                "title": beamtime.title,
                "type": beamtime.proposal_type,
                "start": local(beamtime.start),
                "end": local(beamtime.end),
                "esaf": beamtime.esaf,
                "proprietary": beamtime.proprietary,
                "mail_in": beamtime.mail_in,
                "people": [
                    {
                        "badge": person.badge,
                        "first_name": person.first_name,
                        "last_name": person.last_name,
                        "email": person.email,
                        "institution": person.institution,
                        "pi": person.is_pi,
                    }
                    for person in beamtime.people
                ],
            }
            for beamtime in beamtimes
        ],
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(params=["fake", "file"])
def schedule(request: pytest.FixtureRequest, tmp_path: Path) -> SchedulingSource:
    if request.param == "fake":
        return FakeSchedule(runs=RUNS, beamtimes=BEAMTIMES)
    return FileSchedule(schedule_file(tmp_path / "schedule.yaml", RUNS, BEAMTIMES), CHICAGO)


@pytest.fixture(params=["fake", "file"])
def unreadable(request: pytest.FixtureRequest, tmp_path: Path) -> SchedulingSource:
    """A schedule that cannot be read: the service down, the file gone."""
    if request.param == "fake":
        return FailingSchedule()
    return FileSchedule(tmp_path / "gone.yaml", CHICAGO)


def test_every_run_in_order(schedule):
    assert schedule.runs() == [RUN, NEXT_RUN]


def test_the_beamtimes_starting_in_a_run_whole_in_the_order_scheduled(schedule):
    assert schedule.beamtimes(RUN) == [BEAMTIME, LATER]
    assert schedule.beamtimes(NEXT_RUN) == [NEXT]
    (first, _) = schedule.beamtimes(RUN)
    assert first.people == BEAMTIME.people and first.pi == MEI  # the PI listed second, flagged
    assert (first.esaf, first.proposal_type, first.mail_in) == ("281001", "General User", True)


def test_a_run_without_beamtimes_has_none(schedule):
    empty = Run("2026-2", parse_time("2026-05-26 08:00", CHICAGO), parse_time("2026-09-29 08:00", CHICAGO))
    assert schedule.beamtimes(empty) == []


def test_a_schedule_that_cannot_be_read_is_a_scheduling_error(unreadable):
    with pytest.raises(SchedulingError):
        unreadable.runs()
    with pytest.raises(SchedulingError):
        unreadable.beamtimes(RUN)
