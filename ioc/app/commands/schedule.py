"""The schedule: Refresh (by hand and the periodic one) and Tag."""

from __future__ import annotations

import logging

from ...domain.beamtime import (
    Beamtime,
    CurrentProposal,
    UserInfo,
    beamtime_key,
    select_beamtime,
    select_run,
)
from ...domain.errors import InputError, MissingPVs, ServiceError
from ...domain.tag import TAG_FIELDS
from ...domain.times import days, look_moment
from ..handling import Step
from ..messages import BeamtimeToFollow, Refresh, RefreshAutomatic, Tag
from ..state import Outcome

log = logging.getLogger(__name__)


def refresh(step: Step, command: Refresh) -> Outcome:
    """Read the beamtime at now + offset from the scheduling system; the proposal PVs follow it until
    an experiment is selected, then a different beamtime is only announced. An offset other than 0
    is said (MINOR): it makes Create take another beamtime than the one running now."""
    found = _read_schedule(step, command.offset_days)
    news = _news(step, again=True)
    cleaned = _cleaned(step)
    offset = _offset_said(step)
    _follow_if_new(step)
    said = news + cleaned + offset
    return Outcome(found.message + said, warning=found.warning or bool(said))


def refresh_automatic(step: Step, command: RefreshAutomatic) -> Outcome:
    """The periodic refresh: says only what is new (a beamtime other than the selection's, once per
    beamtime; values the schedule had to have cleaned, once while they stay the same; an offset other
    than 0, at the first refresh after a start, an autosaved one, and whenever it changed), and with
    dm.follow_schedule raises `BeamtimeToFollow` for a new beamtime."""
    before = step.state.scheduled
    _read_schedule(step, command.offset_days)
    news = _news(step, again=False)
    cleaned = _cleaned(step, before)
    offset = _offset_said(step) if before is None or before.offset_days != command.offset_days else ""
    _follow_if_new(step)
    # after a start, Status keeps the start's message unless an offset or cleaned values are to be said
    said = (cleaned if before is None else news + cleaned) + offset
    return Outcome(said.removeprefix("; "), warning=bool(said))


def _read_schedule(step: Step, offset_days: float) -> Outcome:
    services = step.services
    now = services.clock()
    moment = look_moment(now, offset_days).astimezone(services.tz)
    scheduling = services.adapters.scheduling
    run = select_run(services.contact("Scheduling", scheduling.runs), moment)
    beamtimes = services.contact("Scheduling", scheduling.beamtimes, run) if run else []
    beamtime = select_beamtime(beamtimes, moment)
    warning = ""
    if beamtime is not None and beamtime.esaf:
        beamtime, warning = _with_esaf(step, beamtime)
    step.change(scheduled=CurrentProposal(run, beamtime, now.astimezone(services.tz), offset_days))
    when = moment.strftime("%Y-%m-%d %H:%M %Z")
    if run is None:
        return Outcome(f"no run of the schedule contains {when}", warning=True)
    if beamtime is None:
        return Outcome(f"run {run.name}: no beamtime scheduled at {when}", warning=True)
    pi = beamtime.pi
    message = f"proposal {beamtime.gup} ({pi.last_name if pi else 'no PI'}), run {run.name}{warning}"
    return Outcome(message, warning=bool(warning))


def _offset_said(step: Step) -> str:
    """A Status fragment when the last refresh looked elsewhere than now (TimeOffsetDays not 0), else ''."""
    scheduled = step.state.scheduled
    if scheduled is None or not scheduled.offset_days:
        return ""
    offset = scheduled.offset_days
    moment = look_moment(scheduled.refreshed, offset).astimezone(step.services.tz).strftime("%Y-%m-%d %H:%M %Z")
    direction = "ahead" if offset > 0 else "back"
    return (
        f"; TimeOffsetDays is {offset:g}: the schedule is read {days(offset)} {direction}, at {moment}, so Create "
        "takes the beamtime scheduled then (write 0 for now)"
    )


def _cleaned(step: Step, before: CurrentProposal | None = None) -> str:
    """A Status fragment naming the values of the scheduled beamtime that had to be cleaned or cut;
    '' when none had, or when the refresh `before` found the same beamtime with the same ones."""
    scheduled = step.state.scheduled.beamtime if step.state.scheduled else None
    if scheduled is None or not scheduled.warnings:
        return ""
    previous = before.beamtime if before else None
    if previous and beamtime_key(previous) == beamtime_key(scheduled) and previous.warnings == scheduled.warnings:
        return ""
    return "; from the schedule: " + "; ".join(scheduled.warnings)


def _news(step: Step, *, again: bool) -> str:
    """A Status fragment when the schedule shows a beamtime other than the selected experiment's:
    once per beamtime, or `again` (a Refresh asked for by hand)."""
    state = step.state
    scheduled = state.scheduled.beamtime if state.scheduled else None
    if state.experiment is None or scheduled is None or state.shows_the_schedule:
        return ""
    key = beamtime_key(scheduled)
    if key == state.announced and not again:
        return ""
    step.change(announced=key)
    pi = scheduled.pi
    who = f" ({pi.full_name})" if pi else ""
    return (
        f"; the schedule now shows proposal {scheduled.gup}{who}: the proposal PVs stay on "
        f"{state.experiment.name} (Schedule:ProposalNumber shows it; Create switches to it)"
    )


def _follow_if_new(step: Step) -> None:
    """dm.follow_schedule: raise `BeamtimeToFollow` for a beamtime whose experiment is to be made by itself."""
    key = _beamtime_to_follow(step)
    if key:
        step.emit(BeamtimeToFollow(key))


def _beamtime_to_follow(step: Step) -> str:
    """dm.follow_schedule: the key of a beamtime running now whose experiment was not yet selected by
    itself, else ''. Once per beamtime: a selection made after the switch is left alone."""
    scheduled = step.state.scheduled.beamtime if step.state.scheduled else None
    if not step.services.settings.dm.follow_schedule or scheduled is None:  # a scheduled beamtime runs at now + offset
        return ""
    key = beamtime_key(scheduled)
    store = step.services.adapters.state
    if key == store.followed():
        return ""
    if step.state.experiment is not None and step.state.shows_the_schedule:  # already on it: no switch
        store.mark_followed(key)
        return ""
    return key


def _with_esaf(step: Step, beamtime: Beamtime) -> tuple[Beamtime, str]:
    """Add the ESAF's experimenters (those not on the proposal) and DOI where the DM backend knows them,
    cleaned as the schedule is."""
    try:
        people, doi = step.services.contact("DM", step.services.adapters.dm.esaf, beamtime.esaf)
    except ServiceError as error:
        return beamtime, f"; ESAF {beamtime.esaf} not read: {error}"
    return beamtime.with_esaf_read(doi, people), ""


def tag(step: Step, command: Tag) -> Outcome:
    """Write the user-info PVs into the IOC at `prefix` (e.g. tomoScan), under the names `tag.fields` gives.

    A PV the target lacks is left out: silently when its absence is normal
    (ESAFDOINumber: tomoScan has none), with a warning naming it otherwise;
    when none answers, the adapter's error says so and nothing is written.
    """
    prefix = command.prefix.strip()
    if not prefix:
        raise InputError("TagPrefix is empty: set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
    current = step.state.shown
    if current is None or current.beamtime is None:
        raise InputError("no proposal is shown to tag: Refresh, Create, CreateManual or Select first")
    info = UserInfo.of(current)
    settings = step.services.settings.tag
    target = step.services.adapters.tag
    to_write = {pv: getattr(info, TAG_FIELDS[name]) for name, pv in settings.targets().items()}
    missing: tuple[str, ...] = ()
    try:
        cut = target.write(prefix, to_write)
    except MissingPVs as error:  # nothing was written: write those that answered
        missing = error.missing
        answered = {pv: value for pv, value in to_write.items() if pv not in missing}
        if not answered:
            raise
        cut = target.write(prefix, answered)
    absent = [prefix + pv for pv in missing if pv not in settings.optional_pvs()]
    if missing:
        log.info("Tag: %s has no %s; the other fields were written", prefix, ", ".join(missing))
    warnings = [f"not written, no such PV: {', '.join(absent)}"] if absent else []
    warnings += [f"cut to fit the target: {', '.join(cut)}"] if cut else []
    who = " ".join(name for name in (info.first_name, info.last_name) if name) or "no PI"
    what = f"proposal {info.proposal}" if info.proposal else f"{who} (no proposal)"  # a manual experiment
    message = "; ".join([f"tagged {prefix} with {what}", *warnings])
    return Outcome(message, warning=bool(warnings))
