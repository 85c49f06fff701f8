"""The domain's rules of beamtimes: run and beamtime selection across DST, the PI, a beamtime's values cleaned."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from dmagic_ioc.ioc.domain.beamtime import Beamtime, Run, clean_beamtime, select_beamtime, select_run
from dmagic_ioc.ioc.domain.people import Person, user_lists
from dmagic_ioc.ioc.domain.proposal import Proposal
from dmagic_ioc.ioc.domain.text import LIST_BYTES, TITLE_BYTES
from dmagic_ioc.ioc.domain.times import parse_time

from .domain_cases import CHICAGO, UTC, utc


def beamtime(gup: str, start: datetime, end: datetime, people: tuple[Person, ...] = ()) -> Beamtime:
    return Beamtime(Proposal(gup, f"proposal {gup}", people), start, end)


# --------------------------------------------------------------------------- DST and selection


DST_BEAMTIME = beamtime("1", parse_time("2026-10-31 08:00", CHICAGO), parse_time("2026-11-02 08:00", CHICAGO))


@pytest.mark.parametrize(
    "moment",
    [
        utc(2026, 11, 1, 6, 30),  # 01:30 CDT, before the change
        utc(2026, 11, 1, 7, 30),  # 01:30 CST, after it
        utc(2026, 10, 31, 13),  # the start, in UTC
        utc(2026, 11, 2, 13, 59),  # just before the end (08:00 CST = 14:00 UTC)
    ],
)
def test_beamtime_across_the_dst_change_contains_moments_on_both_sides(moment):
    assert DST_BEAMTIME.contains(moment)
    assert DST_BEAMTIME.contains(moment.astimezone(CHICAGO))


def test_beamtime_across_the_dst_change_ends_at_local_time():
    assert not DST_BEAMTIME.contains(utc(2026, 11, 2, 14))
    assert not DST_BEAMTIME.contains(utc(2026, 11, 2, 14).astimezone(CHICAGO))
    assert DST_BEAMTIME.end.astimezone(UTC) - DST_BEAMTIME.start.astimezone(UTC) == timedelta(hours=49)


def test_contains_compares_real_moments_within_the_repeated_hour():
    """A beamtime ending at 01:45 CDT has ended at 01:30 CST (45 minutes later in real time).

    The IOC converts the looked-at moment into the beamline's zone before
    selecting; both sides then share the same ZoneInfo, and Python compares
    same-tzinfo datetimes by wall clock, ignoring `fold`.
    """
    ends_in_first_hour = beamtime("1", parse_time("2026-10-31 08:00", CHICAGO), parse_time("2026-11-01 01:45", CHICAGO))
    second_0130 = utc(2026, 11, 1, 7, 30).astimezone(CHICAGO)
    assert second_0130.fold == 1
    assert not ends_in_first_hour.contains(utc(2026, 11, 1, 7, 30))
    assert not ends_in_first_hour.contains(second_0130)
    assert select_beamtime([ends_in_first_hour], second_0130) is None


RUNS = [
    Run("2026-2", utc(2026, 6, 1), utc(2026, 9, 29, 13)),
    Run("2026-3", utc(2026, 9, 29, 13), utc(2026, 12, 22, 14)),
]


@pytest.mark.parametrize(
    "moment, name",
    [
        (utc(2026, 6, 1), "2026-2"),  # start inclusive
        (utc(2026, 9, 29, 12, 59, 59), "2026-2"),
        (utc(2026, 9, 29, 13), "2026-3"),  # end exclusive: the next run
        (utc(2026, 12, 22, 13, 59), "2026-3"),
        (utc(2026, 12, 22, 14), None),
        (utc(2026, 5, 31, 23, 59), None),
    ],
)
def test_select_run(moment, name):
    run = select_run(RUNS, moment)
    assert (run.name if run else None) == name


def test_select_run_with_a_moment_in_another_zone():
    assert select_run(RUNS, utc(2026, 9, 29, 13).astimezone(CHICAGO)).name == "2026-3"
    assert select_run([], utc(2026, 9, 29)) is None


def test_select_beamtime_start_inclusive_end_exclusive():
    first = beamtime("1", utc(2026, 10, 14, 13), utc(2026, 10, 17, 13))
    second = beamtime("2", utc(2026, 10, 17, 13), utc(2026, 10, 20, 13))
    assert select_beamtime([first, second], utc(2026, 10, 14, 13)) is first
    assert select_beamtime([first, second], utc(2026, 10, 17, 12, 59, 59)) is first
    assert select_beamtime([first, second], utc(2026, 10, 17, 13)) is second
    assert select_beamtime([first, second], utc(2026, 10, 20, 13)) is None
    assert select_beamtime([first, second], utc(2026, 10, 14, 12, 59)) is None
    assert select_beamtime([], utc(2026, 10, 14)) is None


def test_select_beamtime_overlapping_takes_the_latest_started():
    long = beamtime("1", utc(2026, 10, 1), utc(2026, 10, 31))
    inner = beamtime("2", utc(2026, 10, 10), utc(2026, 10, 12))
    for order in ([long, inner], [inner, long]):
        assert select_beamtime(order, utc(2026, 10, 11)) is inner
        assert select_beamtime(order, utc(2026, 10, 12)) is long
        assert select_beamtime(order, utc(2026, 10, 5)) is long


# --------------------------------------------------------------------------- the PI


ANN = Person("310001", "Ann", "Smith", "ann@example.org", "Argonne")
BO = Person("310002", "Bo", "Li", "bo@example.org", "UChicago")
CY = Person("310003", "Cy", "Ngo", "cy@example.org", "MIT", is_pi=True)


def test_pi_is_the_flagged_person():
    bt = beamtime("1", utc(2026, 1, 1), utc(2026, 1, 2), (ANN, BO, CY))
    assert bt.pi is CY
    assert bt.people_pi_first == (CY, ANN, BO)


def test_pi_falls_back_to_the_first_listed():
    bt = beamtime("1", utc(2026, 1, 1), utc(2026, 1, 2), (BO, ANN))
    assert bt.pi is BO
    assert bt.people_pi_first == (BO, ANN)


def test_two_flagged_pis_the_first_flagged_wins():
    other_pi = Person("310004", "Di", "Roe", is_pi=True)
    bt = beamtime("1", utc(2026, 1, 1), utc(2026, 1, 2), (ANN, other_pi, CY))
    assert bt.pi is other_pi
    assert bt.people_pi_first == (other_pi, ANN, CY)


def test_no_people_no_pi():
    bt = beamtime("1", utc(2026, 1, 1), utc(2026, 1, 2))
    assert bt.pi is None
    assert bt.people_pi_first == ()


def test_people_pi_first_keeps_equal_people_apart():
    """Two entries equal by value (same badge listed twice) are both kept; only the PI moves."""
    twin = Person("310003", "Cy", "Ngo", "cy@example.org", "MIT", is_pi=True)
    bt = beamtime("1", utc(2026, 1, 1), utc(2026, 1, 2), (ANN, CY, twin))
    assert bt.people_pi_first[0] is CY
    assert len(bt.people_pi_first) == 3


def test_year_month_is_of_the_start_in_its_own_zone():
    bt = beamtime("1", parse_time("2026-11-01 00:30", CHICAGO), parse_time("2026-11-03", CHICAGO))
    assert bt.year_month == "2026-11"  # 05:30 UTC, but 2026-11 in Chicago as well
    bt = beamtime("1", parse_time("2026-10-31 23:30", CHICAGO), parse_time("2026-11-03", CHICAGO))
    assert bt.year_month == "2026-10"  # already November in UTC, still October at the beamline


def test_clean_beamtime_cleans_each_value_and_says_which():
    start = datetime(2026, 11, 18, 14, tzinfo=UTC)
    proposal = Proposal(
        gup="1013377",
        title="Huge " + "x" * 10_000_000,
        kind="General\r\nUser",
        people=(
            Person("310010", "Zoë", "Müller", "zoe@example.de\r\nBcc: all@example.org"),
            Person("310011", "Jean\x1b[2J-Luc\x07", "D'Arcy", "jl@example.fr", is_pi=True),
        ),
    )
    raw = Beamtime(proposal, start=start, end=start + timedelta(days=7))
    beamtime = clean_beamtime(raw)
    assert len(beamtime.title.encode("utf-8")) == TITLE_BYTES and beamtime.proposal_type == "General User"
    assert beamtime.warnings == (
        "title cut to 1023 bytes",
        "e-mail of Zoë Müller (310010) dropped (a line break)",
        "first name of Jean[2J-Luc D'Arcy (310011) cleaned of control characters",
    )
    assert [p.email for p in beamtime.people] == ["", "jl@example.fr"]
    cleaned = replace(proposal, title=beamtime.title, kind="General User", people=beamtime.people)
    assert beamtime == replace(raw, proposal=cleaned)
    assert clean_beamtime(beamtime).warnings == beamtime.warnings  # cleaning again adds nothing


def test_user_lists_end_at_the_same_person_and_clean_beamtime_says_so():
    start = datetime(2026, 11, 18, 14, tzinfo=UTC)
    people = tuple(Person(f"{310000 + i}", "N" * 200, f"Person{i}", f"p{i}@example.org") for i in range(60))
    names, badges, emails = user_lists(people)
    count = len(names.split(","))
    assert 0 < count < 60 and len(badges.split(",")) == len(emails.split(",")) == count
    assert len(names.encode("utf-8")) <= LIST_BYTES
    beamtime = clean_beamtime(Beamtime(Proposal("1", "t", people), start, start + timedelta(days=1)))
    assert beamtime.warnings == (f"Users:Names, Users:Badges, Users:Emails list the first {count} of 60 people",)
