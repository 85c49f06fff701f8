"""The schedule: Refresh and Tag."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import TAG_FIELDS
from ..domain.model import (
    Beamtime,
    CurrentProposal,
    InputError,
    MissingPVs,
    ServiceError,
    UserInfo,
    beamtime_key,
    clean_beamtime,
    days,
    look_moment,
    select_beamtime,
    select_run,
)
from .base import BeamlineCore, Outcome

log = logging.getLogger(__name__)


class ScheduleCases(BeamlineCore):
    """The schedule: Refresh and Tag."""

    # ------------------------------------------------------------------ scheduling

    def refresh(self, offset_days: float) -> Outcome:
        """Read the beamtime at now + offset from the scheduling system; the proposal PVs follow it until
        an experiment is selected, then a different beamtime is only announced. An offset other than 0
        is said (MINOR): it makes Create take another beamtime than the one running now."""
        found = self._read_schedule(offset_days)
        news = self._news(again=True)
        cleaned = self._cleaned()
        offset = self._offset_said()
        self._change(to_follow=self._beamtime_to_follow())
        said = news + cleaned + offset
        return Outcome(found.message + said, warning=found.warning or bool(said))

    def refresh_automatic(self, offset_days: float) -> Outcome:
        """The periodic refresh: says only what is new (a beamtime other than the selection's, once per
        beamtime; values the schedule had to have cleaned, once while they stay the same; an offset other
        than 0, at the first refresh after a start, an autosaved one, and whenever it changed), and with
        dm.follow_schedule marks a new beamtime to follow (`state.to_follow`)."""
        before = self.state.scheduled
        self._read_schedule(offset_days)
        news = self._news(again=False)
        cleaned = self._cleaned(before)
        offset = self._offset_said() if before is None or before.offset_days != offset_days else ""
        self._change(to_follow=self._beamtime_to_follow())
        # after a start, Status keeps the start's message unless an offset or cleaned values are to be said
        said = (cleaned if before is None else news + cleaned) + offset
        return Outcome(said.removeprefix("; "), warning=bool(said))

    def _read_schedule(self, offset_days: float) -> Outcome:
        now = self.clock()
        moment = look_moment(now, offset_days).astimezone(self.tz)
        scheduling = self.adapters.scheduling
        run = select_run(self._contact("Scheduling", scheduling.runs), moment)
        beamtimes = self._contact("Scheduling", scheduling.beamtimes, run) if run else []
        beamtime = select_beamtime(beamtimes, moment)
        warning = ""
        if beamtime is not None and beamtime.esaf:
            beamtime, warning = self._with_esaf(beamtime)
        self._change(scheduled=CurrentProposal(run, beamtime, now.astimezone(self.tz), offset_days))
        when = moment.strftime("%Y-%m-%d %H:%M %Z")
        if run is None:
            return Outcome(f"no run of the schedule contains {when}", warning=True)
        if beamtime is None:
            return Outcome(f"run {run.name}: no beamtime scheduled at {when}", warning=True)
        pi = beamtime.pi
        message = f"proposal {beamtime.gup} ({pi.last_name if pi else 'no PI'}), run {run.name}{warning}"
        return Outcome(message, warning=bool(warning))

    def _offset_said(self) -> str:
        """A Status fragment when the last refresh looked elsewhere than now (TimeOffsetDays not 0), else ''."""
        scheduled = self.state.scheduled
        if scheduled is None or not scheduled.offset_days:
            return ""
        offset = scheduled.offset_days
        moment = look_moment(scheduled.refreshed, offset).astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")
        direction = "ahead" if offset > 0 else "back"
        return (
            f"; TimeOffsetDays is {offset:g}: the schedule is read {days(offset)} {direction}, at {moment}, so Create "
            "takes the beamtime scheduled then (write 0 for now)"
        )

    def _cleaned(self, before: CurrentProposal | None = None) -> str:
        """A Status fragment naming the values of the scheduled beamtime that had to be cleaned or cut;
        '' when none had, or when the refresh `before` found the same beamtime with the same ones."""
        scheduled = self.state.scheduled.beamtime if self.state.scheduled else None
        if scheduled is None or not scheduled.warnings:
            return ""
        previous = before.beamtime if before else None
        if previous and beamtime_key(previous) == beamtime_key(scheduled) and previous.warnings == scheduled.warnings:
            return ""
        return "; from the schedule: " + "; ".join(scheduled.warnings)

    def _news(self, *, again: bool) -> str:
        """A Status fragment when the schedule shows a beamtime other than the selected experiment's:
        once per beamtime, or `again` (a Refresh asked for by hand)."""
        scheduled = self.state.scheduled.beamtime if self.state.scheduled else None
        if self.state.experiment is None or scheduled is None or self.state.shows_the_schedule:
            return ""
        key = beamtime_key(scheduled)
        if key == self.state.announced and not again:
            return ""
        self._change(announced=key)
        pi = scheduled.pi
        who = f" ({pi.full_name})" if pi else ""
        return (
            f"; the schedule now shows proposal {scheduled.gup}{who}: the proposal PVs stay on "
            f"{self.state.experiment.name} (Schedule:ProposalNumber shows it; Create switches to it)"
        )

    def _beamtime_to_follow(self) -> str:
        """dm.follow_schedule: the key of a beamtime running now whose experiment was not yet selected by
        itself, else ''. Once per beamtime: a selection made after the switch is left alone."""
        scheduled = self.state.scheduled.beamtime if self.state.scheduled else None
        if not self.settings.dm.follow_schedule or scheduled is None:  # a scheduled beamtime runs at now + offset
            return ""
        key = beamtime_key(scheduled)
        if key == self.adapters.state.followed():
            return ""
        if self.state.experiment is not None and self.state.shows_the_schedule:  # already on it: no switch
            self.adapters.state.mark_followed(key)
            return ""
        return key

    def _with_esaf(self, beamtime: Beamtime) -> tuple[Beamtime, str]:
        """Add the ESAF's experimenters and DOI where the DM backend knows them."""
        try:
            people, doi = self._contact("DM", self.adapters.dm.esaf, beamtime.esaf)
        except ServiceError as error:
            return beamtime, f"; ESAF {beamtime.esaf} not read: {error}"
        known = {p.badge for p in beamtime.people}
        extra = tuple(p for p in people if p.badge not in known)
        return clean_beamtime(replace(beamtime, esaf_doi=doi, esaf_people=extra)), ""  # cleaned as the schedule is

    def tag(self, prefix: str) -> Outcome:
        """Write the user-info PVs into the IOC at `prefix` (e.g. tomoScan), under the names `tag.fields` gives.

        A PV the target lacks is left out: silently when its absence is normal
        (ESAFDOINumber: tomoScan has none), with a warning naming it otherwise;
        when none answers, the adapter's error says so and nothing is written.
        """
        prefix = prefix.strip()
        if not prefix:
            raise InputError("TagPrefix is empty: set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
        current = self.state.shown
        if current is None or current.beamtime is None:
            raise InputError("no proposal is shown to tag: Refresh, Create, CreateManual or Select first")
        info = UserInfo.of(current)
        settings = self.settings.tag
        to_write = {pv: getattr(info, TAG_FIELDS[name]) for name, pv in settings.targets().items()}
        missing: tuple[str, ...] = ()
        try:
            cut = self.adapters.tag.write(prefix, to_write)
        except MissingPVs as error:  # nothing was written: write those that answered
            missing = error.missing
            answered = {pv: value for pv, value in to_write.items() if pv not in missing}
            if not answered:
                raise
            cut = self.adapters.tag.write(prefix, answered)
        absent = [prefix + pv for pv in missing if pv not in settings.optional_pvs()]
        if missing:
            log.info("Tag: %s has no %s; the other fields were written", prefix, ", ".join(missing))
        warnings = [f"not written, no such PV: {', '.join(absent)}"] if absent else []
        warnings += [f"cut to fit the target: {', '.join(cut)}"] if cut else []
        who = " ".join(name for name in (info.first_name, info.last_name) if name) or "no PI"
        what = f"proposal {info.proposal}" if info.proposal else f"{who} (no proposal)"  # a manual experiment
        message = "; ".join([f"tagged {prefix} with {what}", *warnings])
        return Outcome(message, warning=bool(warnings))
