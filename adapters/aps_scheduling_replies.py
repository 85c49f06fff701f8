"""The APS scheduling service's replies, JSON already decoded, read into domain types.

Pure: the functions raise only `SchedulingError`, with a message a beamline scientist can act on from
the Status PV; anything the service says is quoted cut short (`clipped`).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, tzinfo

from ..ioc.domain.beamtime import Beamtime, Run, clean_beamtime
from ..ioc.domain.errors import SchedulingError
from ..ioc.domain.esaf import Esaf
from ..ioc.domain.naming import BADGE
from ..ioc.domain.people import Person
from ..ioc.domain.proposal import Proposal
from ..ioc.domain.text import STRING_BYTES
from ..ioc.domain.times import parse_time

log = logging.getLogger(__name__)

# Anything the service says in `{"message": ...}` is cut to this many characters:
# the Status PV holds 512 bytes and the message is wrapped in our own words.
_MAX_QUOTED = 160

_FLAG_TRUE = {"y", "yes", "true", "1"}
_DIGITS = re.compile(r"[0-9]+")


def parse_runs(reply: object, tz: tzinfo | None = None) -> list[Run]:
    """`run/getAllRuns` -> runs, in the order the service lists them.

    Times without a UTC offset are local time in `tz`; without `tz` they are refused.
    """
    items = _expect_list(reply, "a list of runs")
    runs = []
    for index, item in enumerate(items):
        where = f"run #{index + 1}"
        if not isinstance(item, dict):
            raise SchedulingError(f"scheduling reply: {where} is {_kind(item)}, not an object")
        name = _text(item.get("runName"), f"{where} runName")
        if not name:
            raise SchedulingError(f"scheduling reply: {where} has no runName")
        where = f"run {clipped(name)}"
        start = _time(item.get("startTime"), f"{where} startTime", tz)
        end = _time(item.get("endTime"), f"{where} endTime", tz)
        runs.append(Run(name=name, start=start, end=end))
    return runs


def parse_activity(activity: object, tz: tzinfo) -> Beamtime:
    """One scheduled activity of a proposal -> a Beamtime.

    Times without a UTC offset are taken as local time in `tz`. An activity
    without a proposal (maintenance, studies) is an error here; use
    `parse_activities` to skip those.
    """
    if not isinstance(activity, dict):
        raise SchedulingError(f"scheduling reply: an activity is {_kind(activity)}, not an object")
    proposal = _proposal(activity)
    if proposal is None:
        raise SchedulingError(f"scheduling reply: activity {_activity_id(activity)} has no proposal")
    gup = _gup(proposal.get("gupId"), activity)
    where = f"GUP {gup}"
    start = _time(activity.get("startTime"), f"{where} startTime", tz)
    end = _time(activity.get("endTime"), f"{where} endTime", tz)
    beamtime = Beamtime(
        Proposal(
            gup=gup,
            title=_text(proposal.get("proposalTitle"), f"{where} proposalTitle"),
            people=_people(proposal.get("experimenters"), where),
            kind=_proposal_type(proposal.get("proposalType"), where),
            proprietary=_flag(proposal.get("proprietaryFlag")),
            mail_in=_flag(proposal.get("mailInFlag")),
        ),
        start=start,
        end=end,
        esaf_form=Esaf.numbered(_esaf(activity.get("experimentId"), where)),
    )
    return clean_beamtime(beamtime)  # each value on its own: one bad value affects that value alone


def parse_activities(reply: object, tz: tzinfo) -> list[Beamtime]:
    """A list of activities -> the beamtimes of the proposals among them.

    Activities without a proposal (maintenance, machine studies) are skipped;
    several activities of one proposal give one Beamtime each.
    """
    items = _expect_list(reply, "a list of activities")
    beamtimes = []
    for item in items:
        if isinstance(item, dict) and _proposal(item) is None:
            log.debug("skipping activity %s: no proposal", _activity_id(item))
            continue
        beamtimes.append(parse_activity(item, tz))
    return beamtimes


def parse_schedule(reply: object, tz: tzinfo) -> list[Beamtime]:
    """`schedule/findByRunNameAndScheduleName` -> beamtimes: a list whose first element holds `activities`."""
    items = _expect_list(reply, "a schedule")
    if not items:
        raise SchedulingError("scheduling reply: no schedule for this beamline and run")
    schedule = items[0]
    if not isinstance(schedule, dict):
        raise SchedulingError(f"scheduling reply: the schedule is {_kind(schedule)}, not an object")
    if "activities" not in schedule:
        raise SchedulingError("scheduling reply: the schedule has no activities")
    activities = schedule["activities"]
    return [] if activities is None else parse_activities(activities, tz)


def _expect_list(reply: object, what: str) -> list:
    if isinstance(reply, list):
        return reply
    if isinstance(reply, dict) and "message" in reply:
        said = clipped(str(reply["message"]))
        raise SchedulingError(f'scheduling service answered "{said}" instead of {what}')
    raise SchedulingError(f"scheduling reply: expected {what}, got {_kind(reply)}")


def _proposal(activity: dict) -> dict | None:
    """The activity's proposal; None when it has none (a non-user activity)."""
    beamtime = activity.get("beamtime")
    if beamtime is None:
        return None
    where = f"scheduling reply: activity {_activity_id(activity)}"
    if not isinstance(beamtime, dict):
        raise SchedulingError(f"{where} has a beamtime of {_kind(beamtime)}")
    proposal = beamtime.get("proposal")
    if proposal is None:
        return None
    if not isinstance(proposal, dict):
        raise SchedulingError(f"{where} has a proposal of {_kind(proposal)}")
    return proposal


def _activity_id(activity: dict) -> str:
    value = activity.get("activityId")
    return clipped(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else "?"


def _gup(value: object, activity: dict) -> str:
    gup = _integer_text(value)
    if gup is None:
        shown = "missing" if value is None else f"not a number ({clipped(repr(value))})"
        raise SchedulingError(f"scheduling reply: activity {_activity_id(activity)} has gupId {shown}")
    return gup


def _esaf(value: object, where: str) -> str:
    if value is None:
        return ""
    esaf = _integer_text(value)
    if esaf is None:
        raise SchedulingError(f"scheduling reply: {where} has experimentId {clipped(repr(value))}, not a number")
    return esaf


def _integer_text(value: object) -> str | None:
    """123, 123.0 or "123" -> "123"; None for anything else, and for a number an EPICS string cannot hold."""
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if _DIGITS.fullmatch(text) and len(text) <= STRING_BYTES else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return str(value) if 0 <= value < 10**STRING_BYTES else None


def _badge(value: object) -> str | None:
    """A badge as the service spells it (digits, leading zeros kept); None if it is not one."""
    if isinstance(value, int):
        value = _integer_text(value)
    return value.strip() if isinstance(value, str) and BADGE.fullmatch(value.strip()) else None


def _time(value: object, where: str, tz: tzinfo | None) -> datetime:
    if value is None or value == "":
        raise SchedulingError(f"scheduling reply: {where} is missing")
    if not isinstance(value, str):
        raise SchedulingError(f"scheduling reply: {where} is {_kind(value)}, not a time")
    try:
        moment = parse_time(value, tz if tz is not None else _REQUIRE_OFFSET)
    except (ValueError, OverflowError):
        raise SchedulingError(f"scheduling reply: {where} {clipped(value)!r} is not an ISO 8601 time") from None
    if moment.tzinfo is _REQUIRE_OFFSET:
        raise SchedulingError(f"scheduling reply: {where} {clipped(value)!r} has no UTC offset")
    return moment


class _NoZone(tzinfo):
    """Marks a time that came without an offset where one is required (run limits)."""

    def utcoffset(self, moment: datetime | None) -> None:
        return None

    def tzname(self, moment: datetime | None) -> None:
        return None

    def dst(self, moment: datetime | None) -> None:
        return None


_REQUIRE_OFFSET = _NoZone()


def _text(value: object, where: str) -> str:
    """An optional text field: None -> "", numbers -> their digits, other types refused."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SchedulingError(f"scheduling reply: {where} is {_kind(value)}, not text")


def _flag(value: object) -> bool:
    """`Y`/`Yes`/true -> True; `N`/`No`/null/missing/anything else -> False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _FLAG_TRUE
    return isinstance(value, int) and value == 1


def _proposal_type(value: object, where: str) -> str:
    if isinstance(value, dict):
        return _text(value.get("display"), f"{where} proposalType.display")
    if isinstance(value, str):
        return value.strip()
    return ""


def _people(value: object, where: str) -> tuple[Person, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SchedulingError(f"scheduling reply: {where} experimenters is {_kind(value)}, not a list")
    people = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise SchedulingError(f"scheduling reply: {where} experimenter #{index + 1} is {_kind(item)}")
        badge = _badge(item.get("badge"))
        if badge is None:
            # Without a badge a person can get no DM account; keep the rest of the proposal.
            shown = clipped(repr(item.get("badge")))
            log.warning("%s: experimenter #%s has no valid badge (%s); left out", where, index + 1, shown)
            continue
        person_where = f"{where} experimenter {badge}"
        people.append(
            Person(
                badge=badge,
                first_name=_text(item.get("firstName"), f"{person_where} firstName"),
                last_name=_text(item.get("lastName"), f"{person_where} lastName"),
                email=_text(item.get("email"), f"{person_where} email"),
                institution=_text(item.get("institution"), f"{person_where} institution"),
                is_pi=_flag(item.get("piFlag")),
            )
        )
    return tuple(people)


def _kind(value: object) -> str:
    """How a JSON value is named in an error message."""
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def clipped(text: str) -> str:
    """`text` on one line, cut to _MAX_QUOTED characters, to be quoted in a message."""
    text = " ".join(text[: 2 * _MAX_QUOTED].split())  # a look at the start only: the text may be 10 MB
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."
