"""Parsing of APS scheduling replies: the fixture replies, odd spellings, and fuzzing."""

from __future__ import annotations

import copy
import json
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dmagic_ioc.adapters.aps_scheduling_replies import parse_activities, parse_activity, parse_runs, parse_schedule
from dmagic_ioc.ioc.domain.beamtime import Beamtime, find_beamtime, select_beamtime
from dmagic_ioc.ioc.domain.errors import SchedulingError
from dmagic_ioc.ioc.domain.text import TEXT_BYTES, TITLE_BYTES, email_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "aps-scheduling"
SCHEDULE = "schedule-findByRunNameAndScheduleName-2026-3-2-BM-A,B.json"
ACTIVITY = "activity-findByRunNameAndBeamlineId-2026-3-2-BM-A,B.json"
CHICAGO = ZoneInfo("America/Chicago")
CDT = timezone(timedelta(hours=-5))
CST = timezone(timedelta(hours=-6))


def load(name: str) -> object:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def activities() -> list[dict]:
    return load(SCHEDULE)[0]["activities"]


@pytest.fixture(scope="module")
def beamtimes() -> dict[str, Beamtime]:
    return {b.gup: b for b in parse_schedule(load(SCHEDULE), CHICAGO)}


# --------------------------------------------------------------------------
# Runs


def test_runs_parse_with_their_offsets():
    runs = parse_runs(load("run-getAllRuns.json"))
    assert [run.name for run in runs] == ["2026-1", "2026-2", "2026-3", "2027-1"]
    run = runs[2]
    assert run.start == datetime(2026, 9, 29, 8, tzinfo=CDT)
    assert run.end == datetime(2026, 12, 22, 8, tzinfo=CST)
    assert run.contains(datetime(2026, 11, 20, tzinfo=CHICAGO))


def test_run_without_offset_is_local_time_when_a_zone_is_given():
    reply = [{"runName": "2026-3", "startTime": "2026-09-29 08:00:00", "endTime": "2026-12-22T08:00:00-0600"}]
    (run,) = parse_runs(reply, CHICAGO)
    assert run.start == datetime(2026, 9, 29, 8, tzinfo=CHICAGO)
    assert run.end == datetime(2026, 12, 22, 8, tzinfo=CST)
    with pytest.raises(SchedulingError, match="no UTC offset"):
        parse_runs(reply)


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (
            {"message": "User not authorized for beamline"},
            '"User not authorized for beamline" instead of a list of runs',
        ),
        ("<html>login</html>", "expected a list of runs, got text"),
        ([1, 2], "run #1 is a number"),
        ([{"startTime": "2026-01-06T08:00:00-06:00", "endTime": "2026-04-28T08:00:00-05:00"}], "run #1 has no runName"),
        ([{"runName": "2026-1", "endTime": "2026-04-28T08:00:00-05:00"}], "run 2026-1 startTime is missing"),
        ([{"runName": "2026-1", "startTime": "soon", "endTime": "later"}], "'soon' is not an ISO 8601 time"),
        ([{"runName": "2026-1", "startTime": 1, "endTime": 2}], "startTime is a number, not a time"),
    ],
)
def test_malformed_runs_reply_is_a_scheduling_error(reply, words):
    with pytest.raises(SchedulingError) as raised:
        parse_runs(reply)
    assert words in str(raised.value)


# --------------------------------------------------------------------------
# The three beamtimes of the fixture


def test_the_schedule_holds_three_beamtimes(beamtimes):
    assert list(beamtimes) == ["1012039", "1013377", "1014002"]


def test_activity_endpoint_reply_gives_the_same_beamtimes(beamtimes):
    assert parse_activities(load(ACTIVITY), CHICAGO) == list(beamtimes.values())


def test_first_beamtime_pi_flagged_on_first_user(beamtimes):
    beamtime = beamtimes["1012039"]
    assert beamtime.title == (
        "Operando X-ray tomography of lithium dendrite growth in solid-state batteries under fast charging"
    )
    assert len(beamtime.title) > 40  # published in full: it fits ProposalTitle
    assert beamtime.start == datetime(2026, 10, 14, 8, tzinfo=CDT)
    assert beamtime.end == datetime(2026, 10, 17, 8, tzinfo=CDT)
    assert beamtime.year_month == "2026-10"
    assert beamtime.proposal_type == "General User"
    assert beamtime.esaf == "281001"
    assert (beamtime.proprietary, beamtime.mail_in) == (False, False)
    assert [p.badge for p in beamtime.people] == ["310001", "310002", "310003"]
    assert beamtime.pi.badge == "310001"
    assert beamtime.pi.is_pi
    assert (beamtime.pi.first_name, beamtime.pi.last_name) == ("Mei", "Li")
    assert beamtime.pi.institution == "Example State University"
    assert beamtime.pi.email == "mei.li@example.edu"


def test_null_email_becomes_empty(beamtimes):
    okafor = beamtimes["1012039"].people[2]
    assert okafor.last_name == "Okafor"
    assert okafor.email == ""


def test_second_beamtime_offsets_without_colon_and_pi_second(beamtimes):
    beamtime = beamtimes["1013377"]
    assert beamtime.title == "Fast 4D imaging of foam coarsening"
    assert beamtime.start == datetime(2026, 11, 18, 8, tzinfo=CST)
    assert beamtime.end == datetime(2026, 11, 25, 8, tzinfo=CST)
    assert beamtime.start.utcoffset() == timedelta(hours=-6)
    assert beamtime.esaf == "281377"
    assert beamtime.mail_in is True
    assert beamtime.proprietary is False
    assert beamtime.pi.badge == "310011"
    assert beamtime.pi.last_name == "D'Arcy"
    assert [p.badge for p in beamtime.people_pi_first] == ["310011", "310010", "310012"]


def test_non_ascii_names_stay_intact(beamtimes):
    zoe, _, sven = beamtimes["1013377"].people
    assert zoe.first_name == "Zoë"
    assert zoe.last_name == "Müller-Łukasiewicz"
    assert zoe.institution == "Universität Beispielstadt"
    assert sven.last_name == "Øberg"
    assert sven.full_name == "Sven Øberg"


def test_third_beamtime_pi_by_fallback_no_esaf_staff(beamtimes):
    beamtime = beamtimes["1014002"]
    assert not any(p.is_pi for p in beamtime.people)
    assert beamtime.pi.badge == "310020"  # the first person listed
    assert beamtime.pi.last_name == "Raman"
    assert beamtime.esaf == ""
    assert beamtime.proposal_type == "APS Staff"
    assert beamtime.start == datetime(2026, 12, 1, 8, tzinfo=CST)
    assert beamtime.end == datetime(2026, 12, 4, 8, tzinfo=CST)


def test_current_beamtime_is_selected_by_moment(beamtimes):
    moment = datetime(2026, 11, 20, 12, tzinfo=CHICAGO)
    assert select_beamtime(beamtimes.values(), moment).gup == "1013377"
    assert select_beamtime(beamtimes.values(), datetime(2026, 11, 1, tzinfo=CHICAGO)) is None


# --------------------------------------------------------------------------
# Other spellings and missing optional fields


def first_activity() -> dict:
    return copy.deepcopy(activities()[0])


def test_yes_no_spelling_of_flags():
    activity = first_activity()
    proposal = activity["beamtime"]["proposal"]
    for person in proposal["experimenters"]:
        person["piFlag"] = "No"
    proposal["experimenters"][1]["piFlag"] = "Yes"
    proposal["proprietaryFlag"] = "Y"
    proposal["mailInFlag"] = "N"
    beamtime = parse_activity(activity, CHICAGO)
    assert beamtime.pi.badge == "310002"
    assert [p.is_pi for p in beamtime.people] == [False, True, False]
    assert beamtime.proprietary is True
    assert beamtime.mail_in is False


def test_missing_optional_fields_take_defaults():
    activity = first_activity()
    del activity["experimentId"]
    proposal = activity["beamtime"]["proposal"]
    for key in ("proposalTitle", "proposalType", "proprietaryFlag", "mailInFlag"):
        del proposal[key]
    for person in proposal["experimenters"]:
        for key in ("email", "institution", "piFlag", "firstName"):
            del person[key]
    beamtime = parse_activity(activity, CHICAGO)
    assert (beamtime.title, beamtime.proposal_type, beamtime.esaf) == ("", "", "")
    assert (beamtime.proprietary, beamtime.mail_in) == (False, False)
    assert beamtime.pi.badge == "310001"
    assert beamtime.pi.last_name == "Li"
    assert beamtime.pi.email == ""


def test_no_experimenters_gives_no_pi():
    activity = first_activity()
    activity["beamtime"]["proposal"]["experimenters"] = None
    beamtime = parse_activity(activity, CHICAGO)
    assert beamtime.people == ()
    assert beamtime.pi is None


def test_numbers_given_as_text_or_integers():
    activity = first_activity()
    activity["experimentId"] = "281001"
    proposal = activity["beamtime"]["proposal"]
    proposal["gupId"] = "1012039"
    proposal["experimenters"][0]["badge"] = 310001
    proposal["experimenters"][1]["badge"] = "010002"
    beamtime = parse_activity(activity, CHICAGO)
    assert (beamtime.gup, beamtime.esaf) == ("1012039", "281001")
    assert [p.badge for p in beamtime.people] == ["310001", "010002", "310003"]


def test_experimenter_without_badge_is_left_out():
    activity = first_activity()
    activity["beamtime"]["proposal"]["experimenters"][1]["badge"] = None
    beamtime = parse_activity(activity, CHICAGO)
    assert [p.badge for p in beamtime.people] == ["310001", "310003"]


def test_bad_values_are_cleaned_each_on_its_own_and_named():
    """A line break or comma in an e-mail drops that e-mail alone; control characters leave a name; a
    10 MB title is cut to what ProposalTitle holds. The warnings name each."""
    activity = first_activity()
    proposal = activity["beamtime"]["proposal"]
    proposal["proposalTitle"] = "Operando\r\n" + "x" * 10_000_000
    mei, tomas, amara = proposal["experimenters"]
    mei["email"] = "mei.li@example.edu\r\nBcc: everyone@example.org"
    tomas["email"] = "t.novak@example.org,eve@example.com"
    amara["firstName"] = "Amara\x1b[2J\x07"
    beamtime = parse_activity(activity, CHICAGO)
    assert beamtime.title.startswith("Operando xxx") and len(beamtime.title.encode("utf-8")) == TITLE_BYTES
    assert [p.email for p in beamtime.people] == ["", "", ""]  # Amara had none
    assert [(p.first_name, p.institution) for p in beamtime.people][:2] == [
        ("Mei", "Example State University"),
        ("Tomas", "Institute of Example Materials"),
    ]
    assert beamtime.people[2].first_name == "Amara[2J"
    assert beamtime.warnings == (
        "title cut to 1023 bytes",
        "e-mail of Mei Li (310001) dropped (a line break)",
        "e-mail of Tomas Novak (310002) dropped (a comma)",
        "first name of Amara[2J Okafor (310003) cleaned of control characters",
    )


def test_numbers_no_epics_string_holds_are_refused_not_crashed_on():
    activity = first_activity()
    activity["beamtime"]["proposal"]["gupId"] = "1" * 5000  # int() of it would raise ValueError
    with pytest.raises(SchedulingError, match="gupId not a number"):
        parse_activity(activity, CHICAGO)
    activity = first_activity()
    activity["experimentId"] = 10**50
    with pytest.raises(SchedulingError, match="experimentId 1000000.*not a number"):
        parse_activity(activity, CHICAGO)
    activity = first_activity()
    activity["beamtime"]["proposal"]["experimenters"][1]["badge"] = 10**50  # no badge: that person is left out
    assert [p.badge for p in parse_activity(activity, CHICAGO).people] == ["310001", "310003"]


# Any text: control characters, line breaks, lone surrogates (JSON carries them), any plane.
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=2000)
TEXT_FIELDS = [
    (("beamtime", "proposal", "proposalTitle"), TITLE_BYTES),
    (("beamtime", "proposal", "proposalType", "display"), TEXT_BYTES),
    (("beamtime", "proposal", "experimenters", 0, "firstName"), TEXT_BYTES),
    (("beamtime", "proposal", "experimenters", 0, "lastName"), TEXT_BYTES),
    (("beamtime", "proposal", "experimenters", 0, "institution"), TEXT_BYTES),
    (("beamtime", "proposal", "experimenters", 0, "email"), TEXT_BYTES),
]


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(any_text, min_size=len(TEXT_FIELDS), max_size=len(TEXT_FIELDS)))
def test_any_text_in_the_reply_comes_out_clean_and_bounded(texts):
    activity = first_activity()
    for (path, _), text in zip(TEXT_FIELDS, texts, strict=True):
        mutate(activity, path, text)
    beamtime = parse_activity(activity, CHICAGO)  # never raises: text is never a reason to refuse
    mei = beamtime.people[0]
    values = [beamtime.title, beamtime.proposal_type, mei.first_name, mei.last_name, mei.institution, mei.email]
    for value, (_, limit) in zip(values, TEXT_FIELDS, strict=True):
        assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value)
        assert len(value.encode("utf-8")) <= limit and value == " ".join(value.split())
    assert mei.email == "" or email_problem(mei.email) == ""
    if texts[-1].strip() and not mei.email:
        assert any(w.startswith("e-mail of ") and "310001" in w and " dropped (" in w for w in beamtime.warnings)


def test_time_without_offset_is_facility_local_time():
    activity = first_activity()
    activity["startTime"] = "2026-10-14 08:00:00"
    activity["endTime"] = "2026-10-17T08:00:00Z"
    beamtime = parse_activity(activity, CHICAGO)
    assert beamtime.start == datetime(2026, 10, 14, 8, tzinfo=CHICAGO)
    assert beamtime.start.utcoffset() == timedelta(hours=-5)
    assert beamtime.end == datetime(2026, 10, 17, 8, tzinfo=timezone.utc)


def test_several_activities_of_one_proposal_give_one_beamtime_each():
    first, second = first_activity(), first_activity()
    second["startTime"], second["endTime"] = "2026-11-02T08:00:00-0600", "2026-11-04T08:00:00-0600"
    result = parse_activities([first, second], CHICAGO)
    assert [b.gup for b in result] == ["1012039", "1012039"]
    assert find_beamtime(result, "1012039").start == datetime(2026, 11, 2, 8, tzinfo=CST)


@pytest.mark.parametrize(
    "without_proposal",
    [
        {"activityId": 1, "activityType": {"activityTypeName": "maintenance"}, "beamtime": None},
        {"activityId": 2, "activityType": {"activityTypeName": "machine studies"}},
        {"activityId": 3, "beamtime": {"beamtimeId": 7, "proposal": None}},
    ],
)
def test_activities_without_proposal_are_skipped(without_proposal):
    result = parse_activities([without_proposal, *activities()], CHICAGO)
    assert [b.gup for b in result] == ["1012039", "1013377", "1014002"]
    with pytest.raises(SchedulingError, match="has no proposal"):
        parse_activity(without_proposal, CHICAGO)


def test_schedule_without_activities_list():
    assert parse_schedule([{"scheduleName": "2-BM-A,B", "activities": None}], CHICAGO) == []
    assert parse_schedule([{"scheduleName": "2-BM-A,B", "activities": []}], CHICAGO) == []
    with pytest.raises(SchedulingError, match="no schedule"):
        parse_schedule([], CHICAGO)
    with pytest.raises(SchedulingError, match="has no activities"):
        parse_schedule([{"scheduleName": "2-BM-A,B"}], CHICAGO)


def set_path(activity: dict, path: tuple[str, ...], value: object) -> dict:
    target = activity
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return activity


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("startTime",), None, "GUP 1012039 startTime is missing"),
        (("endTime",), "2026-13-45T08:00:00-05:00", "GUP 1012039 endTime '2026-13-45T08:00:00-05:00' is not an ISO"),
        (("beamtime", "proposal", "gupId"), None, "has gupId missing"),
        (("beamtime", "proposal", "gupId"), "GUP-1", "has gupId not a number ('GUP-1')"),
        (("beamtime", "proposal", "gupId"), True, "not a number"),
        (("experimentId",), "n/a", "experimentId 'n/a', not a number"),
        (("beamtime", "proposal", "experimenters"), {"badge": "1"}, "experimenters is an object, not a list"),
        (("beamtime", "proposal", "experimenters", 0), "Li", "experimenter #1 is text"),
        (("beamtime", "proposal", "proposalTitle"), ["a"], "proposalTitle is a list, not text"),
        (("beamtime", "proposal"), "1012039", "has a proposal of text"),
        (("beamtime",), 42, "has a beamtime of a number"),
    ],
)
def test_malformed_activity_is_a_scheduling_error(path, value, words):
    activity = set_path(first_activity(), path, value)
    with pytest.raises(SchedulingError) as raised:
        parse_activity(activity, CHICAGO)
    assert words in str(raised.value)
    with pytest.raises(SchedulingError):
        parse_activities([activity], CHICAGO)


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ({"message": "Not authorized"}, '"Not authorized" instead of a list of activities'),
        ({"message": "x" * 1000}, "..."),
        ({"error": "oops"}, "expected a list of activities, got an object"),
        (None, "got null"),
        ("<!DOCTYPE html>", "got text"),
        ([["nested"]], "an activity is a list"),
        ([7], "an activity is a number"),
    ],
)
def test_malformed_activities_reply_is_a_scheduling_error(reply, words):
    with pytest.raises(SchedulingError) as raised:
        parse_activities(reply, CHICAGO)
    assert words in str(raised.value)
    assert len(str(raised.value)) < 300


# --------------------------------------------------------------------------
# Fuzzing: odd replies give a result or a SchedulingError, nothing else.

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["Y", "N", "Yes", "No", "", "2026-10-14T08:00:00-0500", "2026-10-14", "-05:00", "1012039"]),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

ACTIVITY_FIELDS = [
    ("startTime",),
    ("endTime",),
    ("experimentId",),
    ("beamtime",),
    ("beamtime", "proposal"),
    ("beamtime", "proposal", "gupId"),
    ("beamtime", "proposal", "proposalTitle"),
    ("beamtime", "proposal", "proposalType"),
    ("beamtime", "proposal", "proposalType", "display"),
    ("beamtime", "proposal", "proprietaryFlag"),
    ("beamtime", "proposal", "mailInFlag"),
    ("beamtime", "proposal", "experimenters"),
    ("beamtime", "proposal", "experimenters", 0),
    ("beamtime", "proposal", "experimenters", 0, "badge"),
    ("beamtime", "proposal", "experimenters", 0, "piFlag"),
    ("beamtime", "proposal", "experimenters", 1, "email"),
    ("beamtime", "proposal", "experimenters", 1, "firstName"),
    ("beamtime", "proposal", "experimenters", 2, "lastName"),
    ("beamtime", "proposal", "experimenters", 2, "institution"),
]

MISSING = object()
changes = st.lists(
    st.tuples(st.sampled_from(ACTIVITY_FIELDS), st.one_of(st.just(MISSING), json_value)),
    max_size=5,
)


def mutate(activity: dict, path: tuple, value: object) -> None:
    """Set (or delete, for MISSING) the field at `path`, if its parents are still containers."""
    target = activity
    for key in path[:-1]:
        try:
            target = target[key]
        except (KeyError, IndexError, TypeError):
            return
    if not isinstance(target, (dict, list)):
        return
    try:
        if value is MISSING:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return


def assert_parses_or_refuses(call) -> object:
    try:
        return call()
    except SchedulingError as error:
        assert str(error)
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 2), edits=changes)
def test_fuzzed_activity_parses_or_is_refused(index, edits):
    activity = copy.deepcopy(activities()[index])
    for path, value in edits:
        mutate(activity, path, value)
    beamtime = assert_parses_or_refuses(lambda: parse_activity(activity, CHICAGO))
    if beamtime is not None:
        assert isinstance(beamtime, Beamtime)
        assert beamtime.gup.isdigit()
        assert beamtime.start.tzinfo is not None and beamtime.end.tzinfo is not None
        assert all(isinstance(p.email, str) for p in beamtime.people)
    result = assert_parses_or_refuses(lambda: parse_activities([activity, *activities()], CHICAGO))
    if result is not None:
        assert all(isinstance(b, Beamtime) for b in result)


@settings(max_examples=300, deadline=None)
@given(reply=json_value)
def test_fuzzed_replies_parse_or_are_refused(reply):
    for parse in (
        lambda: parse_activities(reply, CHICAGO),
        lambda: parse_schedule(reply, CHICAGO),
        lambda: parse_runs(reply),
    ):
        result = assert_parses_or_refuses(parse)
        assert result is None or isinstance(result, list)


@settings(max_examples=200, deadline=None)
@given(run=st.dictionaries(st.sampled_from(["runName", "startTime", "endTime"]), json_value, max_size=3))
def test_fuzzed_runs_parse_or_are_refused(run):
    result = assert_parses_or_refuses(lambda: parse_runs([run], CHICAGO))
    assert result is None or len(result) == 1
