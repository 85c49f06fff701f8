"""Times: parsing the schedule's, the moment the IOC looks at, and how they are shown."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo

_OFFSET_WITHOUT_COLON = re.compile(r"([+-])(\d{2})(\d{2})$")


def parse_time(text: str, tz: tzinfo) -> datetime:
    """Parse an ISO 8601 time; a time without offset is local time in `tz`.

    Accepts offsets written `-05:00`, `-0500` and `Z`, a space instead of `T`,
    and a bare date (midnight local time). Raises ValueError on anything else.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty time")
    text = _OFFSET_WITHOUT_COLON.sub(r"\1\2:\3", text) if "T" in text or " " in text else text
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment


def look_moment(now: datetime, offset_days: float) -> datetime:
    """The moment the IOC looks at: now shifted by `TimeOffsetDays`."""
    return now + timedelta(days=offset_days)


def days(count: float) -> str:
    """`1 day`, `7 days`, `2.5 days` (a TimeOffsetDays, its sign left out)."""
    count = abs(count)
    return f"{count:g} day" if count == 1 else f"{count:g} days"


def iso(moment: datetime | None) -> str:
    """ISO 8601 with UTC offset, to the second; empty for None."""
    return moment.isoformat(timespec="seconds") if moment else ""


def within(moment: datetime, start: datetime, end: datetime) -> bool:
    """start <= moment < end as real instants: datetimes sharing one tzinfo compare by wall
    clock, which is wrong inside the hour repeated when daylight saving time ends."""
    return start.timestamp() <= moment.timestamp() < end.timestamp()
