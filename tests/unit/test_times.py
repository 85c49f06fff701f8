"""Times: parsing the schedule's, and how an offset is said."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from dmagic_ioc.ioc.domain.times import days, parse_time

from .domain_cases import CHICAGO, UTC, utc

# --------------------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    "text, expected_utc",
    [
        ("2026-10-14T08:00:00-05:00", utc(2026, 10, 14, 13)),
        ("2026-10-14T08:00:00-0500", utc(2026, 10, 14, 13)),
        ("2026-10-14 08:00-0500", utc(2026, 10, 14, 13)),
        ("2026-10-14T08:00:00+0530", utc(2026, 10, 14, 2, 30)),
        ("2026-10-14T13:00:00Z", utc(2026, 10, 14, 13)),
        ("2026-10-14T13:00Z", utc(2026, 10, 14, 13)),
        ("  2026-10-14T13:00:00+00:00  ", utc(2026, 10, 14, 13)),
    ],
)
def test_parse_time_offsets(text, expected_utc):
    moment = parse_time(text, CHICAGO)
    assert moment.tzinfo is not None
    assert moment == expected_utc


def test_parse_time_keeps_the_written_offset():
    assert parse_time("2026-10-14T08:00:00-0500", CHICAGO).utcoffset() == timedelta(hours=-5)
    assert parse_time("2026-10-14T08:00:00Z", CHICAGO).utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text, expected_utc",
    [
        ("2026-10-14 08:00", utc(2026, 10, 14, 13)),  # CDT, UTC-5
        ("2026-10-14T08:00:00", utc(2026, 10, 14, 13)),
        ("2026-12-14 08:00", utc(2026, 12, 14, 14)),  # CST, UTC-6
    ],
)
def test_parse_time_naive_is_local_time_in_the_given_zone(text, expected_utc):
    moment = parse_time(text, CHICAGO)
    assert moment.tzinfo is CHICAGO
    assert moment == expected_utc


def test_parse_time_naive_in_another_zone():
    assert parse_time("2026-10-14 08:00", ZoneInfo("Europe/Berlin")) == utc(2026, 10, 14, 6)


def test_parse_time_bare_date_is_local_midnight():
    moment = parse_time("2026-10-14", CHICAGO)
    assert (moment.hour, moment.minute) == (0, 0)
    assert moment == utc(2026, 10, 14, 5)


def test_parse_time_ambiguous_local_time_takes_the_first_occurrence():
    """2026-11-01 01:30 happens twice in Chicago (CDT, then CST): the first one (fold=0, CDT) is taken."""
    moment = parse_time("2026-11-01 01:30", CHICAGO)
    assert moment.fold == 0
    assert moment.utcoffset() == timedelta(hours=-5)
    # Compared in UTC: Python never calls a fold-dependent local time equal to a time in another zone.
    assert moment.astimezone(UTC) == utc(2026, 11, 1, 6, 30)
    # Who means the second 01:30 must write the offset.
    assert parse_time("2026-11-01 01:30-06:00", CHICAGO) == utc(2026, 11, 1, 7, 30)


def test_parse_time_nonexistent_local_time_uses_the_offset_before_the_change():
    """2026-03-08 02:30 does not exist in Chicago: it is read with the standard-time offset (UTC-6)."""
    moment = parse_time("2026-03-08 02:30", CHICAGO)
    assert moment.utcoffset() == timedelta(hours=-6)
    assert moment.astimezone(UTC) == utc(2026, 3, 8, 8, 30)


@pytest.mark.parametrize("text", ["", "   ", "tomorrow", "2026-13-01", "2026-10-14 25:00", "14/10/2026"])
def test_parse_time_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_time(text, CHICAGO)


@pytest.mark.parametrize("offset, said", [(7, "7 days"), (-1, "1 day"), (2.5, "2.5 days"), (-0.25, "0.25 days")])
def test_days(offset, said):
    assert days(offset) == said
