"""The APS beamline scheduling REST service ("sched-api") as a `SchedulingSource`.

Blocking (requests): the IOC calls it off the event loop. Replies are parsed
by the module-level `parse_*` functions, which are pure and raise only
`SchedulingError`; the class adds HTTP, Basic authentication and error
messages a beamline scientist can act on from the Status PV.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, tzinfo
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from ..ioc.domain.model import (
    BADGE,
    STRING_BYTES,
    Beamtime,
    DMagicError,
    Person,
    Run,
    SchedulingError,
    clean_beamtime,
    parse_time,
)
from ..ioc.secrets import is_loopback, read_credentials
from .http import MB, HttpFailure, NotReached, bounded_request

log = logging.getLogger(__name__)

API_PATH = "beamline-scheduling/sched-api"
CREDENTIALS_KEY = "scheduling.credentials"
ANSWER_CAP = 16 * MB  # the largest answer read: a run's schedule is ~2 kB a beamtime (tests/data)

# Anything the service says in `{"message": ...}` is cut to this many characters:
# the Status PV holds 512 bytes and the message is wrapped in our own words.
_MAX_QUOTED = 160

_FLAG_TRUE = {"y", "yes", "true", "1"}
_DIGITS = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------
# Parsing: JSON (already decoded) -> domain types. Pure; raises SchedulingError only.


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
        where = f"run {_short(name)}"
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
        gup=gup,
        title=_text(proposal.get("proposalTitle"), f"{where} proposalTitle"),
        start=start,
        end=end,
        people=_people(proposal.get("experimenters"), where),
        proposal_type=_proposal_type(proposal.get("proposalType"), where),
        esaf=_esaf(activity.get("experimentId"), where),
        proprietary=_flag(proposal.get("proprietaryFlag")),
        mail_in=_flag(proposal.get("mailInFlag")),
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
        said = _short(str(reply["message"]))
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
    return _short(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else "?"


def _gup(value: object, activity: dict) -> str:
    gup = _integer_text(value)
    if gup is None:
        shown = "missing" if value is None else f"not a number ({_short(repr(value))})"
        raise SchedulingError(f"scheduling reply: activity {_activity_id(activity)} has gupId {shown}")
    return gup


def _esaf(value: object, where: str) -> str:
    if value is None:
        return ""
    esaf = _integer_text(value)
    if esaf is None:
        raise SchedulingError(f"scheduling reply: {where} has experimentId {_short(repr(value))}, not a number")
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
        raise SchedulingError(f"scheduling reply: {where} {_short(value)!r} is not an ISO 8601 time") from None
    if moment.tzinfo is _REQUIRE_OFFSET:
        raise SchedulingError(f"scheduling reply: {where} {_short(value)!r} has no UTC offset")
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
            shown = _short(repr(item.get("badge")))
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


def _short(text: str) -> str:
    text = " ".join(text[: 2 * _MAX_QUOTED].split())  # a look at the start only: the text may be 10 MB
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


# --------------------------------------------------------------------------
# The service


class _NoFallback(SchedulingError):
    """A failure the other endpoint would repeat (credentials, service unreachable)."""


class ApsScheduling:
    """The APS scheduling service for one beamline, through one reused requests.Session."""

    def __init__(
        self,
        url: str,
        beamline: str,
        credentials: Path | None,
        timeout: float,
        tz: tzinfo,
        session: requests.Session | None = None,
        *,
        allow_insecure: bool = False,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "?"
        if parts.port is not None:
            self._host = f"{self._host}:{parts.port}"
        if parts.username is not None or parts.password is not None:
            raise SchedulingError("scheduling.url: must not hold a user name or password; use scheduling.credentials")
        if parts.scheme != "https" and not allow_insecure and not is_loopback(parts.hostname or ""):
            raise SchedulingError(
                f"scheduling.url: plain {parts.scheme or 'no scheme'} to {self._host} would send the password in "
                "clear; use https://, or scheduling.allow_insecure: true"
            )
        self._base = f"{url.rstrip('/')}/{API_PATH}/"
        self._beamline = beamline
        self._credentials = Path(credentials) if credentials is not None else None
        self._timeout = timeout
        self._tz = tz
        self._session = session if session is not None else requests.Session()
        self._auth: HTTPBasicAuth | None = None
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ApsScheduling(host={self._host!r}, beamline={self._beamline!r}, credentials='{self._credentials}')"

    def runs(self) -> list[Run]:
        """Every run the service knows."""
        return parse_runs(self._get("run/getAllRuns"), self._tz)

    def beamtimes(self, run: Run) -> list[Beamtime]:
        """The beamtimes of this beamline in `run`.

        Asks the `schedule/...` endpoint, which also lists beamtimes where the
        beamline was not the proposal's first choice; falls back to the
        `activity/...` endpoint when that one fails with a reply of its own.
        """
        segments = f"{_segment(run.name)}/{_segment(self._beamline)}"
        try:
            return parse_schedule(self._get(f"schedule/findByRunNameAndScheduleName/{segments}"), self._tz)
        except _NoFallback:
            raise
        except SchedulingError as error:
            log.warning("schedule endpoint failed (%s); trying the activity endpoint", error)
        try:
            return parse_activities(self._get(f"activity/findByRunNameAndBeamlineId/{segments}"), self._tz)
        except SchedulingError as error:
            raise SchedulingError(f"{error} (beamline {self._beamline}, run {run.name})") from None

    def close(self) -> None:
        """Close the HTTP session's connections."""
        self._session.close()

    def _basic_auth(self) -> HTTPBasicAuth:
        """Read the credentials file on first use (and again after a refusal)."""
        with self._auth_lock:
            if self._auth is None:
                if self._credentials is None:
                    raise _NoFallback(f"{CREDENTIALS_KEY}: must be set to use the APS scheduling service")
                try:
                    user, password = read_credentials(CREDENTIALS_KEY, self._credentials)
                except DMagicError as error:
                    raise _NoFallback(str(error)) from None
                except (OSError, UnicodeError) as error:
                    raise _NoFallback(f"{CREDENTIALS_KEY}: cannot read {self._credentials}: {error}") from None
                self._auth = HTTPBasicAuth(user, password)
            return self._auth

    def _forget_credentials(self) -> None:
        with self._auth_lock:
            self._auth = None

    def _get(self, endpoint: str) -> object:
        """GET one endpoint and decode its JSON; every failure becomes a SchedulingError.

        Bounded (`http.bounded_request`): the timeout is for the whole call, the answer is capped at
        ANSWER_CAP, and a redirect is refused (the request carries the password)."""
        auth = self._basic_auth()
        log.debug("GET %s from %s", endpoint, self._host)
        try:
            answer = bounded_request(self._session, "GET", self._base + endpoint, auth=auth,
                                     headers={"Accept": "application/json"},
                                     deadline=self._timeout, max_bytes=ANSWER_CAP)  # fmt: skip
        except NotReached as error:
            raise _NoFallback(f"cannot reach the scheduling service at {self._host}: {error.reason}") from None
        except HttpFailure as error:  # too slow, a redirect, too large: the other endpoint would do the same
            raise _NoFallback(f"scheduling service {error} ({self._host})") from None
        status = answer.status
        if status in (401, 403):
            self._forget_credentials()  # re-read the file next time: it may have been fixed
            raise _NoFallback(
                f"scheduling service refused the credentials in {self._credentials} "
                f"(HTTP {status}) for beamline {self._beamline}"
            )
        if status >= 500:
            raise SchedulingError(f"scheduling service error HTTP {status} at {self._host}")
        if status >= 300:
            raise SchedulingError(f"scheduling service answered HTTP {status} for {endpoint} at {self._host}")
        try:
            return answer.json()
        except ValueError:
            content_type = answer.headers.get("Content-Type", "").split(";")[0].strip() or "a reply"
            raise SchedulingError(
                f"scheduling service sent {_short(content_type)} instead of JSON ({self._host}, HTTP {status})"
            ) from None


def _segment(text: str) -> str:
    """Percent-encode one URL path segment: `/` and spaces are encoded; `,` (as in `2-BM-A,B`) stays."""
    return quote(text, safe=",")
