"""ESAFs: the Experiment Safety Assessment Form of a beamtime, who is on it, and its values cleaned."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .people import Person, clean_people
from .text import STRING_BYTES, TEXT_BYTES, clean_text


@dataclass(frozen=True)
class Esaf:
    """A beamtime's ESAF. The schedule gives its number; the DM backend, where it knows the ESAF, its DOI
    and its people. `people` are those on it who are not on the proposal (`Esaf.read`): the proposal lists
    the others, and each person gets access once."""

    number: str
    doi: str = ""
    people: tuple[Person, ...] = ()

    @classmethod
    def numbered(cls, number: str) -> Esaf | None:
        """The ESAF the schedule names by `number`; None when it names none."""
        return cls(number) if number else None

    def read(self, doi: str, people: Iterable[Person], on_proposal: Iterable[Person]) -> Esaf:
        """This ESAF with what the DM backend read of it: its DOI, and its people but those `on_proposal`
        (same badge)."""
        known = {person.badge for person in on_proposal}
        return Esaf(self.number, doi, tuple(person for person in people if person.badge not in known))


def clean_esaf(esaf: Esaf) -> tuple[Esaf, tuple[str, ...]]:
    """`esaf` with each value cleaned on its own (`clean_text`, `clean_people`), and the warnings naming
    what was changed."""
    number, number_done = clean_text(esaf.number, STRING_BYTES)
    doi, doi_done = clean_text(esaf.doi, TEXT_BYTES)
    people, about_people = clean_people(esaf.people)
    warnings = [f"{name} {done}" for name, done in (("ESAF", number_done), ("ESAF DOI", doi_done)) if done]
    return Esaf(number, doi, people), (*warnings, *about_people)
