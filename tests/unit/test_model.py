"""The domain rules: time parsing, run/beamtime selection, the PI, folder-safe names, badges."""

from __future__ import annotations

import string
import unicodedata
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from dmagic_ioc.ioc.domain.model import (
    Beamtime,
    InputError,
    Person,
    Run,
    check_name,
    experiment_name,
    folder_safe,
    parse_badges,
    parse_time,
    select_beamtime,
    select_run,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

CHICAGO = ZoneInfo("America/Chicago")
UTC = timezone.utc
TEMPLATE = "{year_month}-{pi_last_name}-{gup}"
# Same examples on every run: a failure here is the code's, not the seed's.
deterministic = settings(derandomize=True, database=None, deadline=None)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def beamtime(gup: str, start: datetime, end: datetime, people: tuple[Person, ...] = ()) -> Beamtime:
    return Beamtime(gup=gup, title=f"proposal {gup}", start=start, end=end, people=people)


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


# --------------------------------------------------------------------------- folder_safe


@pytest.mark.parametrize(
    "name, safe",
    [
        ("Müller-Łukasiewicz", "MullerLukasiewicz"),
        ("Øberg", "Oberg"),
        ("D'Arcy", "DArcy"),
        ("van der Berg", "vanderBerg"),
        ("Straße", "Strasse"),
        ("STRAẞE", "STRASSE"),
        ("Þórsdóttir", "Thorsdottir"),
        ("Æbelø", "AEbelo"),
        ("Œuvre", "OEuvre"),
        ("Đorđević", "Dordevic"),
        ("Yılmaz", "Yilmaz"),
        ("O'Brien-Smith", "OBrienSmith"),
        ("O’Brien", "OBrien"),  # typographic apostrophe
        ("Nguyễn", "Nguyen"),
        ("Šťastný", "Stastny"),
        ("Ångström", "Angstrom"),
        ("Núñez", "Nunez"),
        ("Çelik", "Celik"),
        ("Şahin", "Sahin"),
        ("Łódź", "Lodz"),
        ("Ðalsson", "Dalsson"),
        ("Smith Jr.", "SmithJr"),
        ("de la Cruz y Ñández", "delaCruzyNandez"),
        ("Ｓｍｉｔｈ", "Smith"),  # full-width letters
        ("Smith3", "Smith3"),
        ("李", ""),
        ("Παπαδόπουλος", ""),
        ("Иванов", ""),
        ("", ""),
    ],
)
def test_folder_safe(name, safe):
    assert folder_safe(name) == safe


@deterministic
@given(st.text())
def test_folder_safe_output_is_ascii_letters_and_digits(text):
    assert set(folder_safe(text)) <= set(string.ascii_letters + string.digits)


@deterministic
@given(st.text(alphabet=string.ascii_letters + string.digits))
def test_folder_safe_keeps_ascii_letters_and_digits(text):
    assert folder_safe(text) == text


# --------------------------------------------------------------------------- check_name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "a/b",
        "/abs",
        "..",
        "../x",
        "x/..",
        "a..b",
        "a\\b",
        ".hidden",
        " .hidden",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",  # C1 control
    ],
)
def test_check_name_refuses(name):
    with pytest.raises(InputError) as refused:
        check_name(name, "SelectName")
    assert "SelectName" in str(refused.value)


@pytest.mark.parametrize("name", ["2026-10-Smith-1012039", "a.b", "Ünïcode-2026", "x_y-1"])
def test_check_name_accepts_and_strips(name):
    assert check_name(f"  {name} ") == name


@deterministic
@given(st.text(), st.text(), st.sampled_from(["/", "..", "\\"]))
@example("", "", "/")
def test_names_with_a_separator_or_dotdot_are_refused(before, after, bad):
    with pytest.raises(InputError):
        check_name(before + bad + after)


@deterministic
@given(st.text())
def test_accepted_names_cannot_escape_their_folder(text):
    try:
        name = check_name(text)
    except InputError:
        return
    assert name
    assert "/" not in name and "\\" not in name and ".." not in name
    assert not name.startswith(".")
    assert not any(unicodedata.category(ch) == "Cc" for ch in name)
    assert name == name.strip()


# --------------------------------------------------------------------------- experiment_name


def test_experiment_name_fills_the_template():
    name = experiment_name(TEMPLATE, year_month="2026-10", pi_last_name="Müller-Łukasiewicz", gup="1012039")
    assert name == "2026-10-MullerLukasiewicz-1012039"


def test_experiment_name_other_template():
    assert experiment_name("{gup}_{pi_last_name}", year_month="2026-10", pi_last_name="D'Arcy", gup="7") == "7_DArcy"


def test_experiment_name_manual_default():
    assert experiment_name(TEMPLATE, year_month="2026-11", pi_last_name="Staff", gup="0") == "2026-11-Staff-0"


@pytest.mark.parametrize("gup", ["../etc", "1/2", "a\\b"])
def test_experiment_name_refuses_a_gup_that_escapes(gup):
    with pytest.raises(InputError):
        experiment_name(TEMPLATE, year_month="2026-10", pi_last_name="Li", gup=gup)


def test_experiment_name_refuses_a_template_that_escapes():
    with pytest.raises(InputError):
        experiment_name("../{gup}", year_month="2026-10", pi_last_name="Li", gup="1")


@deterministic
@given(st.text(), st.text(alphabet=string.digits, min_size=1))
def test_experiment_name_any_last_name_gives_a_safe_name(last_name, gup):
    name = experiment_name(TEMPLATE, year_month="2026-10", pi_last_name=last_name, gup=gup)
    assert name == f"2026-10-{folder_safe(last_name)}-{gup}"
    assert check_name(name) == name


# --------------------------------------------------------------------------- parse_badges


@pytest.mark.parametrize(
    "text, badges",
    [
        ("310011", ("310011",)),
        ("310011,310012", ("310011", "310012")),
        (" 310011 , 310012 ", ("310011", "310012")),
        ("310012,310011,310012", ("310012", "310011")),
        ("012345", ("012345",)),
    ],
)
def test_parse_badges(text, badges):
    assert parse_badges(text) == badges


@pytest.mark.parametrize(
    "text",
    ["", "  ", ",", ",,", "12a", "310011,12a", "310011,", ",310011", "310011,,310012", "3 1", "-1", "1.5", "d310011"],
)
def test_parse_badges_refuses(text):
    with pytest.raises(InputError) as refused:
        parse_badges(text)
    assert "Badges" in str(refused.value)


def test_parse_badges_names_the_bad_entries():
    with pytest.raises(InputError, match="'12a'"):
        parse_badges("310011,12a")


@pytest.mark.parametrize("text", ["١٢٣٤٥٦", "３１００１１", "310011,٣١٠٠١٢"])
def test_parse_badges_refuses_non_ascii_digits(text):
    """Arabic-Indic or full-width digits are not badge numbers (they would make DM usernames like `d١٢٣`)."""
    with pytest.raises(InputError):
        parse_badges(text)


@deterministic
@given(st.lists(st.text(alphabet=string.digits, min_size=1, max_size=12), min_size=1))
def test_parse_badges_keeps_order_and_drops_duplicates(badges):
    assert parse_badges(",".join(badges)) == tuple(dict.fromkeys(badges))


@deterministic
@given(st.text())
@example("١٢٣")
def test_parse_badges_accepted_output_is_ascii_digits(text):
    try:
        badges = parse_badges(text)
    except InputError:
        return
    assert badges
    assert len(set(badges)) == len(badges)
    for badge in badges:
        assert badge and set(badge) <= set(string.digits)
    stripped = [entry.strip() for entry in text.split(",")]
    assert list(badges) == list(dict.fromkeys(stripped))
