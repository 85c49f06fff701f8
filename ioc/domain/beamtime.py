"""Runs and beamtimes: which beamtime is current, what Tag writes of it, and its values cleaned."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from .esaf import Esaf, clean_esaf
from .naming import year_month
from .people import Person
from .proposal import Proposal, clean_proposal
from .times import iso, within


@dataclass(frozen=True)
class Run:
    """A scheduling period of the facility, e.g. `2026-3`."""

    name: str
    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return within(moment, self.start, self.end)


@dataclass(frozen=True)
class Beamtime:
    """One scheduled beamtime of a proposal on the beamline, with its ESAF when the schedule names one.

    The proposal's and the ESAF's values read as the beamtime's (`beamtime.gup`, `beamtime.esaf`), as the
    PVs that show the current beamtime name them.
    """

    proposal: Proposal
    start: datetime
    end: datetime
    esaf_form: Esaf | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)  # what `clean_beamtime` changed, naming it

    def contains(self, moment: datetime) -> bool:
        return within(moment, self.start, self.end)

    def with_esaf_read(self, doi: str, people: Iterable[Person]) -> Beamtime:
        """This beamtime with what the DM backend read of its ESAF (`Esaf.read`), cleaned as the schedule is;
        itself when it has no ESAF."""
        if self.esaf_form is None:
            return self
        return clean_beamtime(replace(self, esaf_form=self.esaf_form.read(doi, people, self.people)))

    @property
    def gup(self) -> str:
        return self.proposal.gup

    @property
    def title(self) -> str:
        return self.proposal.title

    @property
    def people(self) -> tuple[Person, ...]:
        return self.proposal.people

    @property
    def proposal_type(self) -> str:
        return self.proposal.kind

    @property
    def proprietary(self) -> bool:
        return self.proposal.proprietary

    @property
    def mail_in(self) -> bool:
        return self.proposal.mail_in

    @property
    def pi(self) -> Person | None:
        return self.proposal.pi

    @property
    def people_pi_first(self) -> tuple[Person, ...]:
        return self.proposal.people_pi_first

    @property
    def esaf(self) -> str:
        """The ESAF's number; '' without one."""
        return self.esaf_form.number if self.esaf_form else ""

    @property
    def esaf_doi(self) -> str:
        return self.esaf_form.doi if self.esaf_form else ""

    @property
    def esaf_people(self) -> tuple[Person, ...]:
        """On the ESAF but not on the proposal."""
        return self.esaf_form.people if self.esaf_form else ()

    @property
    def year_month(self) -> str:
        return year_month(self.start)


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


def clean_beamtime(beamtime: Beamtime) -> Beamtime:
    """`beamtime` as a scheduling backend read it, its proposal and ESAF cleaned (`clean_proposal`,
    `clean_esaf`), with `warnings` naming what was changed. Cleaning again changes nothing and adds no
    warning."""
    proposal, about_proposal = clean_proposal(beamtime.proposal)
    esaf, about_esaf = clean_esaf(beamtime.esaf_form) if beamtime.esaf_form else (None, ())
    warnings = dict.fromkeys((*beamtime.warnings, *about_proposal, *about_esaf))
    return replace(beamtime, proposal=proposal, esaf_form=esaf, warnings=tuple(warnings))


def beamtime_key(beamtime: Beamtime) -> str:
    """Names one beamtime: its proposal and start (a proposal may have several beamtimes)."""
    return f"{beamtime.gup}@{iso(beamtime.start)}"
