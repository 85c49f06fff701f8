"""The embedded scheduling source: a YAML schedule the beamline keeps (`scheduling.backend: file`).

The file is read again at every refresh, so an edit shows at the next
`Refresh`. Times without a UTC offset are the beamline's local time. Format
(see docs/configuration.md for a full example):

    runs:                                  # optional
      - {name: 2026-3, start: 2026-09-29 08:00, end: 2026-12-22 08:00}
    beamtimes:
      - gup: 1012039
        title: Operando tomography of ...
        type: General User                 # optional
        start: 2026-10-14 08:00            # or 2026-10-14T08:00:00-05:00
        end: 2026-10-17 08:00
        esaf: 281001                       # optional
        proprietary: false                 # optional
        mail_in: false                     # optional
        people:
          - {badge: 310001, first_name: Mei, last_name: Li, email: mei.li@example.edu,
             institution: Example State University, pi: true}
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone, tzinfo
from pathlib import Path

import yaml

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML without libyaml: the Python parser, 40 times slower (3 s for a 10 MB title)
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

from ..ioc.domain.beamtime import Beamtime, Run, clean_beamtime
from ..ioc.domain.errors import SchedulingError
from ..ioc.domain.esaf import Esaf
from ..ioc.domain.naming import BADGE
from ..ioc.domain.people import Person
from ..ioc.domain.proposal import Proposal
from ..ioc.domain.text import printable
from ..ioc.domain.times import parse_time

log = logging.getLogger(__name__)

_SHOWN_CHARS = 60  # of a bad value quoted in an error

# The keys of each part of the file; any other is refused, naming it (a misspelled key would be lost silently).
_KEYS = {
    "the schedule": ("runs", "beamtimes"),
    "run": ("name", "start", "end"),
    "beamtime": ("gup", "title", "type", "start", "end", "esaf", "proprietary", "mail_in", "people"),
    "person": ("badge", "first_name", "last_name", "email", "institution", "pi"),
}

# Without a run list, one nameless run spans all time.
_ALL_TIME = Run("", datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, tzinfo=timezone.utc))


class _TextLoader(_SafeLoader):
    """SafeLoader (libyaml's) that leaves times and numbers as written: the zone of a time is ours
    to decide, and a badge `012345` must not turn into an octal number."""


_AS_TEXT = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _AS_TEXT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class FileSchedule:
    """A beamline schedule in a YAML file."""

    def __init__(self, path: Path, tz: tzinfo):
        self.path = Path(path)
        self.tz = tz

    def _load(self) -> dict:
        try:
            data = yaml.load(self.path.read_text(encoding="utf-8"), Loader=_TextLoader)  # noqa: S506
        except OSError as error:
            raise SchedulingError(f"cannot read the schedule {self.path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise SchedulingError(f"the schedule {self.path} is not UTF-8 text") from None
        except yaml.YAMLError as error:
            raise SchedulingError(f"the schedule {self.path} is not valid YAML: {error}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SchedulingError(f"the schedule {self.path} must be a mapping with 'runs' and 'beamtimes'")
        unknown = [str(key) for key in data if key not in _KEYS["the schedule"]]
        if unknown:
            raise SchedulingError(f"the schedule {self.path}: {_key(unknown[0])}: unknown key (known: runs, beamtimes)")
        return data

    def runs(self) -> list[Run]:
        data = self._load()
        if "runs" not in data:
            return [_ALL_TIME]
        return [self._run(entry, f"runs[{i}]") for i, entry in enumerate(_entries(data, "runs", self.path))]

    def beamtimes(self, run: Run) -> list[Beamtime]:
        entries = _entries(self._load(), "beamtimes", self.path)
        beamtimes = [self._beamtime(entry, f"beamtimes[{i}]") for i, entry in enumerate(entries)]
        return [b for b in beamtimes if run.start <= b.start < run.end]

    def _run(self, entry: dict, where: str) -> Run:
        self._check_keys(entry, "run", where)
        return Run(
            name=self._text(entry, "name", where, required=True),
            start=self._time(entry, "start", where),
            end=self._time(entry, "end", where),
        )

    def _beamtime(self, entry: dict, where: str) -> Beamtime:
        self._check_keys(entry, "beamtime", where)
        people = entry.get("people") or []
        if not isinstance(people, list):
            raise SchedulingError(f"{self.path}: {where}.people must be a list")
        start, end = self._time(entry, "start", where), self._time(entry, "end", where)
        if end <= start:
            raise SchedulingError(f"{self.path}: {where}: end is not after start")
        proposal = Proposal(
            gup=self._text(entry, "gup", where, required=True),
            title=self._text(entry, "title", where),
            kind=self._text(entry, "type", where),
            people=tuple(self._person(p, f"{where}.people[{i}]") for i, p in enumerate(people)),
            proprietary=self._flag(entry, "proprietary", where),
            mail_in=self._flag(entry, "mail_in", where),
        )
        beamtime = Beamtime(proposal, start, end, esaf_form=Esaf.numbered(self._text(entry, "esaf", where)))
        return clean_beamtime(beamtime)  # each value on its own: one bad value affects that value alone

    def _person(self, entry: object, where: str) -> Person:
        if not isinstance(entry, dict):
            raise SchedulingError(f"{self.path}: {where} must be a mapping (badge, first_name, ...)")
        self._check_keys(entry, "person", where)
        badge = self._text(entry, "badge", where, required=True)
        if not BADGE.fullmatch(badge):
            raise SchedulingError(f"{self.path}: {where}.badge {_shown(badge)} is not a badge number")
        return Person(
            badge=badge,
            first_name=self._text(entry, "first_name", where),
            last_name=self._text(entry, "last_name", where),
            email=self._text(entry, "email", where),
            institution=self._text(entry, "institution", where),
            is_pi=self._flag(entry, "pi", where),
        )

    def _check_keys(self, entry: object, part: str, where: str) -> None:
        """Refuse a key a `part` (run, beamtime, person) does not have, naming the file, the entry and the key."""
        if not isinstance(entry, dict):
            raise SchedulingError(f"{self.path}: {where} must be a mapping")
        known = _KEYS[part]
        for key in entry:
            if key not in known:
                raise SchedulingError(f"{self.path}: {where}.{_key(key)}: unknown key of a {part} "
                                      f"(known: {', '.join(known)})")  # fmt: skip

    def _text(self, entry: object, key: str, where: str, *, required: bool = False) -> str:
        if not isinstance(entry, dict):
            raise SchedulingError(f"{self.path}: {where} must be a mapping")
        value = entry.get(key)
        if value is None or value == "":
            if required:
                raise SchedulingError(f"{self.path}: {where}.{key} is missing")
            return ""
        if isinstance(value, (dict, list, bool)):
            raise SchedulingError(f"{self.path}: {where}.{key} must be text or a number")
        return str(value).strip()

    def _time(self, entry: dict, key: str, where: str) -> datetime:
        text = self._text(entry, key, where, required=True)
        try:
            return parse_time(text, self.tz)
        except ValueError:
            raise SchedulingError(f"{self.path}: {where}.{key} {_shown(text)} is not a date/time") from None

    def _flag(self, entry: dict, key: str, where: str) -> bool:
        value = entry.get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise SchedulingError(f"{self.path}: {where}.{key} must be true or false")
        return value


def _shown(text: str) -> str:
    """A value quoted in an error, shortened: it may be megabytes long."""
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + "..."


def _key(key: object) -> str:
    """A key quoted in an error: control characters escaped, shortened."""
    return printable(str(key)[:_SHOWN_CHARS])


def _entries(data: dict, key: str, path: Path) -> list:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise SchedulingError(f"the schedule {path}: '{key}' must be a list")
    return entries
