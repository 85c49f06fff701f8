"""Domain model: people, runs, beamtimes, experiments and the rules that tie them.

Pure Python: no EPICS, no network, no disk. The scheduling adapters (file and
APS) build these types; the IOC publishes them; the rules here (which beamtime
is current, who is the PI, how an experiment is named) are shared by all.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

# --------------------------------------------------------------------------
# Errors: every message is written for the Status PV, for a beamline scientist.


class DMagicError(Exception):
    """A failure whose message is fit for the Status PV."""


class InputError(DMagicError):
    """Bad input from a PV or the config: refused, nothing changed."""


class ServiceError(DMagicError):
    """An outside system failed; `system` names which (its Health PV).

    `done` carries what was achieved before the failure (e.g. the Globus rules
    created, the users added), so the caller can record it: a rerun then
    completes the job instead of starting over or duplicating it.
    """

    system = ""

    def __init__(self, message: str, done=None):
        super().__init__(message)
        self.done = done


class SchedulingError(ServiceError):
    system = "Scheduling"


class DMError(ServiceError):
    system = "DM"


class GlobusError(ServiceError):
    system = "Globus"


class EmailError(ServiceError):
    system = "Email"


class CatalogError(ServiceError):
    system = "Catalog"


class PartialAccess(DMagicError):
    """The work was done, but some access on the filesystem could not be given (a unix group or account
    that does not exist): a MINOR Status naming it. `done` holds the call's result."""

    def __init__(self, message: str, done):
        super().__init__(message)
        self.done = done


class TagError(DMagicError):
    """Tag could not write the target IOC."""


class MissingPVs(TagError):
    """Some of the target's PVs did not answer, so nothing was written; `missing` holds their names
    after the prefix, so that the others can be written."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = tuple(missing)


# --------------------------------------------------------------------------
# Time


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


# --------------------------------------------------------------------------
# People and proposals


@dataclass(frozen=True)
class Person:
    """Someone on a proposal, an ESAF or a beamline's contact list."""

    badge: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    institution: str = ""
    is_pi: bool = False

    @property
    def username(self) -> str:
        return dm_username(self.badge)

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@dataclass(frozen=True)
class Run:
    """A scheduling period of the facility, e.g. `2026-3`."""

    name: str
    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return _within(moment, self.start, self.end)


@dataclass(frozen=True)
class Beamtime:
    """One scheduled beamtime of a proposal on the beamline."""

    gup: str
    title: str
    start: datetime
    end: datetime
    people: tuple[Person, ...] = ()
    proposal_type: str = ""
    esaf: str = ""
    esaf_doi: str = ""
    proprietary: bool = False
    mail_in: bool = False
    esaf_people: tuple[Person, ...] = ()  # on the ESAF but not on the proposal
    warnings: tuple[str, ...] = field(default=(), compare=False)  # what `clean_beamtime` changed, naming it

    def contains(self, moment: datetime) -> bool:
        return _within(moment, self.start, self.end)

    @property
    def pi(self) -> Person | None:
        """The person flagged PI, else the first one listed."""
        return next((p for p in self.people if p.is_pi), self.people[0] if self.people else None)

    @property
    def people_pi_first(self) -> tuple[Person, ...]:
        pi = self.pi
        if pi is None:
            return ()
        return (pi, *(p for p in self.people if p is not pi))

    @property
    def year_month(self) -> str:
        return year_month(self.start)


def _within(moment: datetime, start: datetime, end: datetime) -> bool:
    """start <= moment < end as real instants: datetimes sharing one tzinfo compare by wall
    clock, which is wrong inside the hour repeated when daylight saving time ends."""
    return start.timestamp() <= moment.timestamp() < end.timestamp()


def select_run(runs: Iterable[Run], moment: datetime) -> Run | None:
    """The run containing `moment`, or None."""
    return next((run for run in runs if run.contains(moment)), None)


def select_beamtime(beamtimes: Iterable[Beamtime], moment: datetime) -> Beamtime | None:
    """The beamtime containing `moment`; of overlapping ones, the latest started."""
    current = [b for b in beamtimes if b.contains(moment)]
    return max(current, key=lambda b: b.start.timestamp()) if current else None


def find_beamtime(beamtimes: Iterable[Beamtime], gup: str) -> Beamtime | None:
    """The latest beamtime of proposal `gup`, or None."""
    matching = [b for b in beamtimes if b.gup == gup]
    return max(matching, key=lambda b: b.start) if matching else None


@dataclass(frozen=True)
class CurrentProposal:
    """What a refresh found: the run and beamtime at the looked-at moment (now + `offset_days`)."""

    run: Run | None
    beamtime: Beamtime | None
    refreshed: datetime
    offset_days: float = 0.0  # TimeOffsetDays the schedule was read with


@dataclass(frozen=True)
class UserInfo:
    """Who runs the experiment, on which proposal: what tomoScan keeps in its user-info PVs (the PI's
    name, e-mail, badge, institution; the proposal's number, title, ESAF) and what Tag writes there."""

    first_name: str = ""
    last_name: str = ""
    email: str = ""
    badge: str = ""
    institution: str = ""
    updated: str = ""  # ISO 8601 time the schedule was read
    proposal: str = ""
    title: str = ""
    esaf: str = ""
    esaf_doi: str = ""
    year_month: str = ""

    @classmethod
    def of(cls, current: CurrentProposal) -> UserInfo:
        """The user info of `current`'s beamtime; only the time of the refresh when there is none."""
        beamtime = current.beamtime
        if beamtime is None:
            return cls(updated=iso(current.refreshed))
        pi = beamtime.pi or Person("")
        return cls(
            first_name=pi.first_name,
            last_name=pi.last_name,
            email=pi.email,
            badge=pi.badge,
            institution=pi.institution,
            updated=iso(current.refreshed),
            proposal=beamtime.gup,
            title=beamtime.title,
            esaf=beamtime.esaf,
            esaf_doi=beamtime.esaf_doi,
            year_month=beamtime.year_month,
        )


# --------------------------------------------------------------------------
# Values from the schedule: each cleaned on its own where a scheduling backend builds the types above,
# so that one bad value (a line break in an e-mail, a control character, a 10 MB title) affects that
# value alone. The limits are the sizes of the PVs that show the values, without their NUL.

TITLE_BYTES = 1023  # ProposalTitle
TEXT_BYTES = 255  # names, e-mail, institution, proposal type, ESAF DOI
STRING_BYTES = 39  # GUP, badge, ESAF number: EPICS strings
LIST_BYTES = 8191  # Users:Names, Users:Badges, Users:Emails
LIST_SEPARATOR = ","
EMAIL_CHARS = 254  # the longest address SMTP carries (RFC 5321)

# Control characters but line breaks and tabs (those are white space: they become a space), and lone
# surrogates (JSON can carry them; they are no text and cannot be encoded).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
_LINE_BREAKS = frozenset("\n\r\v\f\x85\u2028\u2029")
_PLAIN_ADDRESS = re.compile(r'[^@\s<>()\[\]":\\]+@[^@\s<>()\[\]":\\]+')
_SHOWN_NAME_CHARS = 40  # a person's name in a warning


def clean_text(value: str, limit: int = TEXT_BYTES) -> tuple[str, str]:
    """`value` on one line, fit for a PV of `limit` bytes: white space (line breaks, tabs) runs become one
    space, other control characters go, and what passes `limit` UTF-8 bytes is cut at a character
    boundary. Returns the text and what was done to it, for a warning ('' when only spacing changed).

    Looks at no more of `value` than could be kept, so a 10 MB title costs what a short one does.
    """
    value = value.strip()
    head = value[: 4 * limit]
    head, controls = _CONTROL.subn("", head)
    text = " ".join(head.split())
    encoded = text.encode("utf-8")
    cut = len(value) > 4 * limit or len(encoded) > limit
    if cut:
        text = encoded[:limit].decode("utf-8", "ignore").rstrip()
    done = ["cleaned of control characters"] if controls else []
    done += [f"cut to {limit} bytes"] if cut else []
    return text, " and ".join(done)


def email_problem(address: str) -> str:
    """What makes `address` other than one plain e-mail address (`name@domain`), in a few words; ''
    when it is one. A line break would let a value write mail headers, a comma or semicolon would
    make it several addresses and the `Users:Emails` list ambiguous. SciCat's stricter rule builds on
    this one (`catalog_values.catalog_email_problem`)."""
    if len(address) > EMAIL_CHARS:
        return f"over {EMAIL_CHARS} characters"
    if any(char in _LINE_BREAKS for char in address):
        return "a line break"
    for char, name in ((",", "a comma"), (";", "a semicolon")):
        if char in address:
            return name
    if _CONTROL.search(address) or "\t" in address:
        return "a control character"
    if any(char.isspace() for char in address):
        return "a space"
    if "@" not in address:
        return "no @"
    if not _PLAIN_ADDRESS.fullmatch(address):
        return "not one plain address"
    return ""


_PERSON_TEXT = {  # Person attribute -> (its name in a warning, its limit)
    "badge": ("badge", STRING_BYTES),
    "first_name": ("first name", TEXT_BYTES),
    "last_name": ("last name", TEXT_BYTES),
    "institution": ("institution", TEXT_BYTES),
}
_BEAMTIME_TEXT = {  # Beamtime attribute -> (its name in a warning, its limit)
    "gup": ("GUP", STRING_BYTES),
    "title": ("title", TITLE_BYTES),
    "proposal_type": ("proposal type", TEXT_BYTES),
    "esaf": ("ESAF", STRING_BYTES),
    "esaf_doi": ("ESAF DOI", TEXT_BYTES),
}


def clean_people(people: Iterable[Person]) -> tuple[tuple[Person, ...], tuple[str, ...]]:
    """`people` with each value cleaned on its own (`clean_text`); an e-mail that is not one plain
    address is dropped and the person keeps the rest. Also the warnings, naming whom and what."""
    cleaned: list[Person] = []
    warnings: list[str] = []
    for person in people:
        values: dict[str, Any] = {}  # attribute -> its cleaned value
        done: dict[str, str] = {}  # the value's name in a warning -> what was done to it
        for attribute, (name, limit) in _PERSON_TEXT.items():
            values[attribute], done[name] = clean_text(getattr(person, attribute), limit)
        email = person.email.strip()
        problem = email_problem(email) if email else ""
        done["e-mail"] = f"dropped ({problem})" if problem else ""
        person = replace(person, email="" if problem else email, **values)
        cleaned.append(person)
        warnings += [f"{name} of {_who(person)} {what}" for name, what in done.items() if what]
    return tuple(cleaned), tuple(warnings)


def _who(person: Person) -> str:
    """A person in a warning: the name (shortened) and the badge."""
    name = person.full_name
    name = name if len(name) <= _SHOWN_NAME_CHARS else name[: _SHOWN_NAME_CHARS - 1] + "…"
    return f"{name} ({person.badge})" if name else f"badge {person.badge}"


def clean_beamtime(beamtime: Beamtime) -> Beamtime:
    """`beamtime` as a scheduling backend read it, each value cleaned on its own (`clean_text`,
    `clean_people`), with `warnings` naming what was changed; the user lists that would not hold every
    person say so too. Cleaning again changes nothing and adds no warning."""
    values: dict[str, Any] = {}
    warnings = list(beamtime.warnings)
    for attribute, (name, limit) in _BEAMTIME_TEXT.items():
        values[attribute], done = clean_text(getattr(beamtime, attribute), limit)
        warnings += [f"{name} {done}"] if done else []
    people, about_people = clean_people(beamtime.people)
    esaf_people, about_esaf_people = clean_people(beamtime.esaf_people)
    cleaned = replace(beamtime, people=people, esaf_people=esaf_people, **values)
    listed = listed_count(cleaned.people_pi_first)
    if listed < len(people):
        warnings.append(f"Users:Names, Users:Badges, Users:Emails list the first {listed} of {len(people)} people")
    warnings += [*about_people, *about_esaf_people]
    return replace(cleaned, warnings=tuple(dict.fromkeys(warnings)))


def user_lists(people: Sequence[Person]) -> tuple[str, str, str]:
    """`Users:Names`, `Users:Badges`, `Users:Emails`: comma-separated, in the same order, unambiguous (a
    comma inside a name is left out; an e-mail that is not one plain address is left empty), and all
    three end at the same person when one would pass LIST_BYTES."""
    columns = _user_columns(people)
    count = _fitting(columns)
    names, badges, emails = (LIST_SEPARATOR.join(column[:count]) for column in columns)
    return names, badges, emails


def listed_count(people: Sequence[Person]) -> int:
    """How many of `people` the user lists hold (`user_lists`)."""
    return _fitting(_user_columns(people))


def _user_columns(people: Sequence[Person]) -> tuple[list[str], list[str], list[str]]:
    """Names (a person without one: the DM username, never an empty entry), badges, e-mails."""
    return (
        [_listed_name(person).replace(LIST_SEPARATOR, "") for person in people],
        [person.badge.replace(LIST_SEPARATOR, "") for person in people],
        ["" if email_problem(person.email) else person.email for person in people],
    )


def _listed_name(person: Person) -> str:
    return person.full_name or (person.username if person.badge else "")


def _fitting(columns: Sequence[Sequence[str]]) -> int:
    """How many rows of `columns` fit in LIST_BYTES, each column joined by the separator."""
    step = len(LIST_SEPARATOR)
    sizes = [-step] * len(columns)  # each value but the first comes after a separator
    for count, row in enumerate(zip(*columns, strict=True)):
        sizes = [size + step + len(value.encode("utf-8")) for size, value in zip(sizes, row, strict=True)]
        if max(sizes) > LIST_BYTES:
            return count
    return len(columns[0])


# --------------------------------------------------------------------------
# Names


# Letters that do not decompose into ASCII + combining marks under NFKD.
_TRANSLITERATION = str.maketrans(
    {
        "Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "ẞ": "SS",
        "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Đ": "D", "đ": "d",
        "Ð": "D", "ð": "d", "Þ": "Th", "þ": "th", "ı": "i", "Ħ": "H",
        "ħ": "h", "Ŧ": "T", "ŧ": "t", "Ŀ": "L", "ŀ": "l", "ĸ": "k",
        "Ŋ": "N", "ŋ": "n", "ſ": "s",
    }
)  # fmt: skip

_NOT_FOLDER_SAFE = re.compile(r"[^A-Za-z0-9]")


def folder_safe(text: str) -> str:
    """`Müller-Łukasiewicz` -> `MullerLukasiewicz`: ASCII letters and digits only."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATION))
    return _NOT_FOLDER_SAFE.sub("", decomposed.encode("ascii", "ignore").decode("ascii"))


def check_name(name: str, what: str = "name") -> str:
    """Return `name` stripped, or refuse one that could escape its folder."""
    name = name.strip()
    if not name:
        raise InputError(f"{what} is empty")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InputError(f"{what} {name!r} has control characters")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InputError(f"{what} {name!r} could escape its folder ('/', '\\', '..' or a leading '.')")
    return name


EXPERIMENT_NAME_FIELDS = ("year_month", "pi_last_name", "gup")


def experiment_name(template: str, *, year_month: str, pi_last_name: str, gup: str) -> str:
    """Fill the `dm.experiment_name` template; the last name is made folder-safe."""
    name = template.format(year_month=year_month, pi_last_name=folder_safe(pi_last_name), gup=gup)
    return check_name(name, "experiment name")


def year_month(moment: datetime | date) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


# --------------------------------------------------------------------------
# Storage layout (dm.layout)

LAYOUT_FIELDS = ("storage_root", "year", "year_month", "run", "gup", "experiment", "beamline", "pi_last_name")
DEFAULT_LAYOUT = "{storage_root}/{year_month}/{experiment}"
DEFAULT_SUBDIRS = ("data", "analysis")


def layout_placeholders(layout: str) -> list[str]:
    """The placeholders `layout` names, in order (ValueError on a malformed template)."""
    return [name for _, name, _, _ in string.Formatter().parse(layout) if name is not None]


def storage_location(
    layout: str,
    storage_root: str,
    experiment: Experiment,
    *,
    beamline: str = "",
    run: str = "",
    pi_last_name: str = "",
    gup: str | None = None,
    key: str = "dm.layout",
) -> str:
    """Fill `dm.layout` for `experiment`: the folder its storage goes in.

    `year` and `year_month` come from the experiment's year-month (else its start), `gup` from the
    experiment unless given (a manual experiment's 0), `pi_last_name` is made folder-safe. Every value
    but `storage_root` must be a folder name; one the layout needs and that is empty is refused.
    """
    ym = experiment.year_month or (year_month(experiment.start) if experiment.start else "")
    values = {
        "year": ym[:4],
        "year_month": ym,
        "run": run,
        "gup": experiment.gup if gup is None else gup,
        "experiment": experiment.name,
        "beamline": beamline,
        "pi_last_name": folder_safe(pi_last_name),
    }
    for name in set(layout_placeholders(layout)) - {"storage_root"}:
        if not values.get(name, "").strip():
            raise InputError(f"{key} needs {{{name}}}, which experiment {experiment.name} has not")
        values[name] = check_name(values[name], f"{{{name}}} of {key}")
    return layout.format(storage_root=storage_root, **values)


POSIX_GROUP_FIELDS = ("gup", "experiment", "beamline", "year", "year_month")
POSIX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")  # a unix group or user name, never a number


def posix_group(template: str, experiment: Experiment, *, beamline: str = "") -> str:
    """The unix group `dm.posix.group` names for `experiment` ("p{gup}" -> "p1234", or a fixed name)."""
    return storage_location(template, "", experiment, beamline=beamline, key="dm.posix.group")


# --------------------------------------------------------------------------
# Badges and users

BADGE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: \d would take Arabic or full-width digits


def dm_username(badge: str) -> str:
    """DM usernames are `d` + badge."""
    return f"d{badge}"


def parse_badges(text: str, what: str = "Badges") -> tuple[str, ...]:
    """`"310011, 310012"` -> `("310011", "310012")`; every entry must be numeric. Spaces around an entry and
    empty entries (`"310011,"`, `"310011,,310012"`) are let pass; `"310 011"` is no badge. `what` names the PV."""
    entries = [entry for entry in (entry.strip() for entry in text.split(",")) if entry]
    if not entries:
        raise InputError(f"{what} is empty: write comma-separated badge numbers, e.g. 310011,310012")
    bad = [entry for entry in entries if not BADGE.fullmatch(entry)]
    if bad:
        shown = ", ".join(printable(repr(entry)) for entry in bad)
        raise InputError(f"{what} has entries that are not badge numbers: {shown}; nothing changed")
    return tuple(dict.fromkeys(entries))


def plural(count: int, noun: str) -> str:
    """`1 user`, `2 users`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x07`), fit for a one-line Status or log."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# --------------------------------------------------------------------------
# Experiments


@dataclass(frozen=True)
class ExperimentUser:
    """A DM user with access to an experiment, and where the access came from."""

    username: str
    name: str = ""
    email: str = ""
    institution: str = ""
    source: str = "proposal"  # proposal | esaf | contact | manual | added

    @classmethod
    def from_person(cls, person: Person, source: str) -> ExperimentUser:
        return cls(person.username, person.full_name, person.email, person.institution, source)


@dataclass(frozen=True)
class Experiment:
    """A DM experiment as the registry (or the APS DM system) holds it."""

    name: str
    title: str = ""
    gup: str = ""
    esaf: str = ""
    start: datetime | None = None
    end: datetime | None = None
    year_month: str = ""
    storage_directory: str = ""
    data_directory: str = ""
    users: tuple[ExperimentUser, ...] = field(default=())

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(user.username for user in self.users)


def beamtime_key(beamtime: Beamtime) -> str:
    """Names one beamtime: its proposal and start (a proposal may have several beamtimes)."""
    return f"{beamtime.gup}@{iso(beamtime.start)}"


def proposal_of(experiment: Experiment) -> Beamtime:
    """An experiment's proposal as its DM record has it: for experiments whose proposal was not kept
    (made before it was, or in the APS DM system). The PI is the first proposal (or manual) user."""
    people: list[Person] = []
    pi_found = False
    for user in experiment.users:
        if user.source not in ("proposal", "manual", "esaf"):
            continue
        first, _, last = user.name.rpartition(" ")
        is_pi = not pi_found and user.source in ("proposal", "manual")
        pi_found = pi_found or is_pi
        badge = user.username[1:] if user.username.startswith("d") else user.username
        people.append(Person(badge, first, last, user.email, user.institution, is_pi=is_pi))
    start = experiment.start or datetime.fromtimestamp(0, timezone.utc)
    return Beamtime(
        gup=experiment.gup,
        title=experiment.title,
        start=start,
        end=experiment.end or start,
        people=tuple(people),
        esaf=experiment.esaf,
    )


class DiskFull(DMError):
    """A disk the IOC writes has no space left (or the quota is spent): the message starts with where,
    "state_dir full: ..." or "storage full: ...". DM's Health shows Error until a DM call works again."""
