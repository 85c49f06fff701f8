"""Experiments: a DM experiment, its users, where their access came from, and who gets access."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, get_args

from .beamtime import Beamtime
from .esaf import Esaf
from .naming import dm_username
from .people import Person
from .proposal import Proposal

# Where a user's access came from: the proposal, its ESAF, the beamline's contacts, CreateManual's badges,
# AddUser, or the APS DM system's list of the experiment's users (which does not say).
UserSource = Literal["proposal", "esaf", "contact", "manual", "added", "dm"]
USER_SOURCES: tuple[UserSource, ...] = get_args(UserSource)
_PI_SOURCES: tuple[UserSource, ...] = ("proposal", "manual")  # the first user from these is the PI
_PEOPLE_SOURCES: tuple[UserSource, ...] = (*_PI_SOURCES, "esaf")  # the people of the proposal and its ESAF


@dataclass(frozen=True)
class ExperimentUser:
    """A DM user with access to an experiment, and where the access came from."""

    username: str
    name: str = ""
    email: str = ""
    institution: str = ""
    source: UserSource = "proposal"

    def __post_init__(self) -> None:
        if self.source not in USER_SOURCES:
            raise ValueError(f"user {self.username}: source {self.source!r} is not one of {', '.join(USER_SOURCES)}")

    @classmethod
    def from_person(cls, person: Person, source: UserSource) -> ExperimentUser:
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

    @property
    def pi_user(self) -> ExperimentUser | None:
        """The PI: the first user from the proposal (or CreateManual), as the users are kept PI first."""
        return next((user for user in self.users if user.source in _PI_SOURCES), None)


def beamtime_users(beamtime: Beamtime) -> list[ExperimentUser]:
    """Who gets access to the experiment of `beamtime`: the proposal's people, the PI first, then the ESAF's
    people who are not on the proposal."""
    users = [ExperimentUser.from_person(person, "proposal") for person in beamtime.people_pi_first]
    return users + [ExperimentUser.from_person(person, "esaf") for person in beamtime.esaf_people]


def with_contacts(users: Iterable[ExperimentUser], contact_badges: Iterable[str]) -> list[ExperimentUser]:
    """`users` (the PI first), then the beamline's contacts who are not among them: each username once, and
    a contact who is on the proposal keeps the place and source the proposal gave."""
    contacts = (ExperimentUser(dm_username(badge), source="contact") for badge in contact_badges)
    unique: dict[str, ExperimentUser] = {}
    for user in (*users, *contacts):
        unique.setdefault(user.username, user)
    return list(unique.values())


def proposal_of(experiment: Experiment) -> Beamtime:
    """An experiment's proposal as its DM record has it: for experiments whose proposal was not kept
    (made before it was, or in the APS DM system). Its people are the proposal, manual and ESAF users;
    the PI is the first proposal (or manual) user."""
    people: list[Person] = []
    pi_found = False
    for user in experiment.users:
        if user.source not in _PEOPLE_SOURCES:
            continue
        first, _, last = user.name.rpartition(" ")
        is_pi = not pi_found and user.source in _PI_SOURCES
        pi_found = pi_found or is_pi
        badge = user.username[1:] if user.username.startswith("d") else user.username
        people.append(Person(badge, first, last, user.email, user.institution, is_pi=is_pi))
    start = experiment.start or datetime.fromtimestamp(0, timezone.utc)
    proposal = Proposal(experiment.gup, experiment.title, tuple(people))
    return Beamtime(proposal, start, experiment.end or start, esaf_form=Esaf.numbered(experiment.esaf))
