"""People: someone on a proposal, an ESAF or a contact list, their values cleaned, and the user lists
(`Users:Names`, `Users:Badges`, `Users:Emails`) they are shown in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .naming import dm_username
from .text import LIST_BYTES, LIST_SEPARATOR, STRING_BYTES, TEXT_BYTES, clean_text, email_problem

_SHOWN_NAME_CHARS = 40  # a person's name in a warning


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


_PERSON_TEXT = {  # Person attribute -> (its name in a warning, its limit)
    "badge": ("badge", STRING_BYTES),
    "first_name": ("first name", TEXT_BYTES),
    "last_name": ("last name", TEXT_BYTES),
    "institution": ("institution", TEXT_BYTES),
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
