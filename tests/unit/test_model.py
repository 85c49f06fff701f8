"""The domain rules: time parsing, run/beamtime selection, the PI, folder-safe names, badges."""

from __future__ import annotations

import string
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from dmagic_ioc.ioc.domain.model import (
    EMAIL_CHARS,
    LIST_BYTES,
    TEXT_BYTES,
    TITLE_BYTES,
    Beamtime,
    InputError,
    Person,
    Run,
    check_name,
    clean_beamtime,
    clean_people,
    clean_text,
    days,
    email_problem,
    experiment_name,
    folder_safe,
    parse_badges,
    parse_time,
    select_beamtime,
    select_run,
    user_lists,
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
        ("310010, 310012", ("310010", "310012")),  # as typed into Manual:Badges
        ("310011,", ("310011",)),  # empty entries are let pass
        (",310011", ("310011",)),
        ("310011,,310012", ("310011", "310012")),
        (" 310011 , ,\t310012 , ", ("310011", "310012")),
    ],
)
def test_parse_badges(text, badges):
    assert parse_badges(text) == badges


@pytest.mark.parametrize(
    "text",
    ["", "  ", ",", ",,", " , ", "12a", "310011,12a", "3 1", "310 011", "-1", "1.5", "d310011", "310011;310012"],
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


# --------------------------------------------------------------------------- values from the schedule

# Any text: control characters, line breaks, lone surrogates (JSON carries them), any plane.
any_text = st.text(alphabet=st.characters(exclude_categories=()))


def is_clean(text: str, limit: int) -> bool:
    """On one line, no control character or surrogate, single-spaced, stripped, within `limit` UTF-8 bytes."""
    return (
        not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)
        and text == " ".join(text.split())
        and len(text.encode("utf-8")) <= limit
    )


@deterministic
@given(any_text, st.sampled_from([39, TEXT_BYTES, TITLE_BYTES]))
@example("Line one\r\nline two\ttabbed", TEXT_BYTES)
@example("\x1b[31mred\x07\x00", TEXT_BYTES)
@example("a\ud800b", 39)
@example("é" * 600, TEXT_BYTES)
def test_any_text_comes_out_clean_and_bounded(text, limit):
    cleaned, done = clean_text(text, limit)
    assert is_clean(cleaned, limit)
    assert clean_text(cleaned, limit) == (cleaned, "")  # cleaning again changes nothing
    if len(text.encode("utf-8", "surrogatepass")) <= limit and is_clean(text, limit):
        assert (cleaned, done) == (text, "")


@pytest.mark.parametrize(
    "text, cleaned, done",
    [
        ("  Operando\r\ntomography\tof  Li  ", "Operando tomography of Li", ""),  # spacing only: no warning
        ("Jean\x1b[2J-Luc\x07", "Jean[2J-Luc", "cleaned of control characters"),
        ("é" * 200, "é" * 127, "cut to 255 bytes"),  # 2 bytes each: cut between characters, never inside one
        ("\x00" + "x" * 300, "x" * 255, "cleaned of control characters and cut to 255 bytes"),
    ],
)
def test_clean_text_says_what_it_did(text, cleaned, done):
    assert clean_text(text) == (cleaned, done)


def test_a_10_mb_title_is_cut_to_what_proposal_title_holds():
    title, done = clean_text("Huge " + "ü" * 5_000_000, TITLE_BYTES)
    assert title == "Huge " + "ü" * 509 and len(title.encode("utf-8")) == 1023
    assert done == "cut to 1023 bytes"


@pytest.mark.parametrize(
    "address, problem",
    [
        ("mei.li@example.edu\r\nBcc: all@example.org", "a line break"),
        ("mei.li@example.edu\n", "a line break"),
        ("a@example.edu,b@example.org", "a comma"),
        ("a@example.edu;b@example.org", "a semicolon"),
        ("mei li@example.edu", "a space"),
        ("mei\tli@example.edu", "a control character"),
        ("mei\x00@example.edu", "a control character"),
        ("mei.li.example.edu", "no @"),
        ("a@b@example.edu", "not one plain address"),
        ("Mei Li <mei@example.edu>", "a space"),
        ("<mei@example.edu>", "not one plain address"),
        ("@example.edu", "not one plain address"),
        ("x" * 250 + "@example.edu", f"over {EMAIL_CHARS} characters"),
    ],
)
def test_email_problem_names_what_is_wrong(address, problem):
    assert email_problem(address) == problem


@pytest.mark.parametrize("address", ["mei.li@example.edu", "o'brien+tomo@lab.example.org", "zoë@beispiel.de"])
def test_plain_addresses_have_no_problem(address):
    assert email_problem(address) == ""


def test_a_bad_email_is_dropped_and_the_person_keeps_the_rest():
    zoe = Person("310010", "Zoë", "Müller", "zoe@example.de\r\nBcc: all@example.org", "Universität", is_pi=True)
    sven = Person("310012", "Sven", "Øberg", "sven@example.se,eve@example.com", "Exempel University")
    ann = Person("310013", "Ann", "Lee", "ann@example.org", "Lab")
    people, warnings = clean_people([zoe, sven, ann])
    assert people == (
        Person("310010", "Zoë", "Müller", "", "Universität", is_pi=True),
        Person("310012", "Sven", "Øberg", "", "Exempel University"),
        ann,
    )
    assert warnings == (
        "e-mail of Zoë Müller (310010) dropped (a line break)",
        "e-mail of Sven Øberg (310012) dropped (a comma)",
    )


def test_a_warning_names_the_person_shortened_and_by_badge():
    (person,), warnings = clean_people([Person("310011", "J" * 300, "D\x07Arcy")])
    assert person.first_name == "J" * TEXT_BYTES and person.last_name == "DArcy"
    who = "J" * 39 + "… (310011)"
    assert warnings == (f"first name of {who} cut to 255 bytes", f"last name of {who} cleaned of control characters")
    nameless = clean_people([Person("310011", last_name="\x1b")])[1]
    assert nameless == ("last name of badge 310011 cleaned of control characters",)


@deterministic
@given(
    st.lists(
        st.builds(Person, badge=st.text(string.digits, min_size=1, max_size=12), first_name=any_text,
                  last_name=any_text, email=any_text, institution=any_text, is_pi=st.booleans()),
        max_size=5,
    )
)  # fmt: skip
def test_any_people_come_out_clean_and_each_warning_names_a_person(people):
    cleaned, warnings = clean_people(people)
    assert len(cleaned) == len(people)
    for before, after in zip(people, cleaned, strict=True):
        assert after.badge == before.badge and after.is_pi == before.is_pi
        assert all(is_clean(value, TEXT_BYTES) for value in (after.first_name, after.last_name, after.institution))
        assert after.email == "" or (email_problem(after.email) == "" and after.email == before.email.strip())
        if before.email.strip() and not after.email:
            assert any(w.startswith("e-mail of ") and after.badge in w and " dropped (" in w for w in warnings)
    assert all(any(f"({p.badge})" in w or f"badge {p.badge}" in w for p in cleaned) for w in warnings)
    assert clean_people(cleaned) == (cleaned, ())


def test_clean_beamtime_cleans_each_value_and_says_which():
    start = datetime(2026, 11, 18, 14, tzinfo=UTC)
    raw = Beamtime(
        gup="1013377",
        title="Huge " + "x" * 10_000_000,
        start=start,
        end=start + timedelta(days=7),
        proposal_type="General\r\nUser",
        people=(
            Person("310010", "Zoë", "Müller", "zoe@example.de\r\nBcc: all@example.org"),
            Person("310011", "Jean\x1b[2J-Luc\x07", "D'Arcy", "jl@example.fr", is_pi=True),
        ),
    )
    beamtime = clean_beamtime(raw)
    assert len(beamtime.title.encode("utf-8")) == TITLE_BYTES and beamtime.proposal_type == "General User"
    assert beamtime.warnings == (
        "title cut to 1023 bytes",
        "e-mail of Zoë Müller (310010) dropped (a line break)",
        "first name of Jean[2J-Luc D'Arcy (310011) cleaned of control characters",
    )
    assert [p.email for p in beamtime.people] == ["", "jl@example.fr"]
    assert beamtime == replace(raw, title=beamtime.title, proposal_type="General User", people=beamtime.people)
    assert clean_beamtime(beamtime).warnings == beamtime.warnings  # cleaning again adds nothing


def test_user_lists_stay_unambiguous():
    people = (
        Person("310001", "Mei", "Li, Jr.", "mei@example.edu"),
        Person("310002", "Bo", "Ngo", "a@example.org,b@example.org"),  # e.g. kept from before the cleaning
        Person("310003", "Cy", "Sá", ""),
    )
    assert user_lists(people) == ("Mei Li Jr.,Bo Ngo,Cy Sá", "310001,310002,310003", "mei@example.edu,,")


def test_user_lists_name_a_person_without_a_name_by_username_never_an_empty_entry():
    """A manual experiment's other badges (`Manual:Badges "310010, 310012"`) may come without a name."""
    people = (Person("310010", "Zoë", "Müller", "zoe@example.de", is_pi=True), Person("310012"))
    assert user_lists(people) == ("Zoë Müller,d310012", "310010,310012", "zoe@example.de,")


@pytest.mark.parametrize("offset, said", [(7, "7 days"), (-1, "1 day"), (2.5, "2.5 days"), (-0.25, "0.25 days")])
def test_days(offset, said):
    assert days(offset) == said


def test_user_lists_end_at_the_same_person_and_clean_beamtime_says_so():
    start = datetime(2026, 11, 18, 14, tzinfo=UTC)
    people = tuple(Person(f"{310000 + i}", "N" * 200, f"Person{i}", f"p{i}@example.org") for i in range(60))
    names, badges, emails = user_lists(people)
    count = len(names.split(","))
    assert 0 < count < 60 and len(badges.split(",")) == len(emails.split(",")) == count
    assert len(names.encode("utf-8")) <= LIST_BYTES
    beamtime = clean_beamtime(Beamtime("1", "t", start, start + timedelta(days=1), people=people))
    assert beamtime.warnings == (f"Users:Names, Users:Badges, Users:Emails list the first {count} of 60 people",)


@deterministic
@given(st.lists(st.tuples(any_text, any_text, any_text), max_size=8))
def test_user_lists_of_any_people_hold_one_entry_per_person_listed(rows):
    people, _ = clean_people(Person(str(i), first, last, email) for i, (first, last, email) in enumerate(rows))
    names, badges, emails = user_lists(people)
    listed = len(badges.split(",")) if badges else 0
    assert listed == len(people)  # cleaned values are short: all fit
    if listed:
        assert len(names.split(",")) == len(emails.split(",")) == listed
