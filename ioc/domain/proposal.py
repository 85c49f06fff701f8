"""Proposals: a proposal (GUP) and the people on it, who its PI is, and its values cleaned."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .people import Person, clean_people, listed_count
from .text import STRING_BYTES, TEXT_BYTES, TITLE_BYTES, clean_text


@dataclass(frozen=True)
class Proposal:
    """A proposal on the beamline: the same for each of its beamtimes."""

    gup: str
    title: str = ""
    people: tuple[Person, ...] = ()
    kind: str = ""  # the proposal type: General User, Partner User, APS Staff; Manual for CreateManual's
    proprietary: bool = False
    mail_in: bool = False

    @property
    def pi(self) -> Person | None:
        """The person flagged PI, else the first one listed."""
        return next((p for p in self.people if p.is_pi), self.people[0] if self.people else None)

    @property
    def people_pi_first(self) -> tuple[Person, ...]:
        """The people, the PI first and the others in the order listed: the order of the user lists and of
        the experiment's users."""
        pi = self.pi
        if pi is None:
            return ()
        return (pi, *(p for p in self.people if p is not pi))


_PROPOSAL_TEXT = {  # Proposal attribute -> (its name in a warning, its limit)
    "gup": ("GUP", STRING_BYTES),
    "title": ("title", TITLE_BYTES),
    "kind": ("proposal type", TEXT_BYTES),
}


def clean_proposal(proposal: Proposal) -> tuple[Proposal, tuple[str, ...]]:
    """`proposal` with each value cleaned on its own (`clean_text`, `clean_people`), and the warnings naming
    what was changed; the user lists that would not hold every person say so too."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for attribute, (name, limit) in _PROPOSAL_TEXT.items():
        values[attribute], done = clean_text(getattr(proposal, attribute), limit)
        warnings += [f"{name} {done}"] if done else []
    people, about_people = clean_people(proposal.people)
    cleaned = replace(proposal, people=people, **values)
    listed = listed_count(cleaned.people_pi_first)
    if listed < len(people):
        warnings.append(f"Users:Names, Users:Badges, Users:Emails list the first {listed} of {len(people)} people")
    return cleaned, (*warnings, *about_people)
