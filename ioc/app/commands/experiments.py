"""Experiments in DM: Create (by hand and following the schedule), CreateManual, Select, Delete."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, datetime, time, timedelta, tzinfo

from ...domain.beamtime import Beamtime, Run, select_run
from ...domain.errors import InputError, PartialAccess, SchedulingError
from ...domain.experiment import Experiment, ExperimentUser, beamtime_users, proposal_of, with_contacts
from ...domain.naming import (
    check_name,
    experiment_name,
    layout_placeholders,
    parse_badges,
    plural,
    storage_location,
    year_month,
)
from ...domain.people import Person
from ...domain.ports import TransferState
from ...domain.proposal import Proposal
from ..handling import Step
from ..messages import Create, CreateManual, Delete, FollowSchedule, Select
from ..state import Outcome
from .common import beamtime_of, load_selection, selected, sources
from .users import give_access, in_background, known_people, revoke

log = logging.getLogger(__name__)


def create(step: Step, command: Create) -> Outcome:
    """Create (or complete) the DM experiment of the beamtime the schedule shows now, and select it."""
    settings = step.services.settings
    scheduled = step.state.scheduled
    beamtime = scheduled.beamtime if scheduled else None
    if beamtime is None:
        raise InputError("no beamtime is scheduled now (Schedule:ProposalNumber is empty): Refresh, or use "
                         "CreateManual")  # fmt: skip
    pi = beamtime.pi
    name = experiment_name(
        settings.dm.experiment_name,
        year_month=beamtime.year_month,
        pi_last_name=pi.last_name if pi else "",
        gup=beamtime.gup,
    )
    people = beamtime_users(beamtime)
    experiment = Experiment(
        name=name,
        title=beamtime.title,
        gup=beamtime.gup,
        esaf=beamtime.esaf,
        start=beamtime.start,
        end=beamtime.end,
        year_month=beamtime.year_month,
        data_directory=str(settings.dm.data_top_dir / name),
    )
    run = scheduled.run if scheduled else None
    experiment = _placed(step, experiment, pi.last_name if pi else "", beamtime.gup, run.name if run else None)
    made, titled = _made_for(step, experiment, beamtime, run)
    if made is not None:
        log.info("Create: experiment %s was made for beamtime %s; reusing it instead of making %s",
                 made.name, beamtime.gup, name)  # fmt: skip
        data = made.data_directory or str(settings.dm.data_top_dir / made.name)
        experiment = replace(experiment, name=made.name, storage_directory=made.storage_directory,
                             data_directory=data)  # fmt: skip
    outcome = _create(step, experiment, people, beamtime, reusing=name if made is not None else "",
                      why=_offset_why(step, beamtime))  # fmt: skip
    if made is not None or not titled:
        return outcome
    found = (f"an experiment with this title exists: {titled[0]}" if len(titled) == 1
             else f"experiments with this title exist: {', '.join(titled)}")  # fmt: skip
    return Outcome(f"{outcome.message}; {found}; not reused (no GUP); Select it if it is this beamtime's",
                   warning=True)  # fmt: skip


def _offset_why(step: Step, beamtime: Beamtime) -> str:
    """A Status fragment naming the beamtime Create took when TimeOffsetDays made it another than now's."""
    offset = step.state.scheduled.offset_days if step.state.scheduled else 0.0
    if not offset:
        return ""
    return f" for the beamtime of {beamtime.start.astimezone(step.services.tz).date()} (TimeOffsetDays {offset:g})"


def _made_for(step: Step, experiment: Experiment, beamtime: Beamtime, run: Run | None
              ) -> tuple[Experiment | None, list[str]]:  # fmt: skip
    """An experiment of the station made for `beamtime` under another name (by DMagic, which spells the
    PI's name otherwise, or by hand), or None when one has the name this IOC gives it, or none fits;
    and the names of those that share only the proposal's title (never reused: another proposal may
    have the same title, "Commissioning"; Status names them).

    Made for it: the same proposal by its GUP (the one DM holds, else the one that ends the name as
    DMagic names experiments), in the same run and month (or started within the beamtime). Of several,
    the surest, then the nearest in time.
    """
    tz = step.services.tz
    records = step.services.contact("DM", step.services.adapters.dm.station_experiments)
    if any(record.name == experiment.name for record in records):
        return None, []
    fits, titled = [], []
    for record in records:
        if not _same_beamtime(record, beamtime, run, tz):
            continue
        evidence = _proposal_evidence(record, beamtime)
        if evidence is not None:
            days = abs((_day(record.start, tz) - _day(beamtime.start, tz)).days) if record.start else 1e9
            fits.append((evidence, days, record.name, record))
        elif _same_title(record, beamtime):
            titled.append(record.name)
    return (min(fits, key=lambda fit: fit[:3])[3] if fits else None), sorted(titled)


def follow_schedule(step: Step, command: FollowSchedule) -> Outcome:
    """dm.follow_schedule: create (or select) the experiment of the beamtime that started, as Create
    would, and mark the beamtime followed; a transfer still running for the previous experiment is left
    alone, with a warning."""
    services = step.services
    previous = step.state.experiment
    outcome = create(step, Create())
    if command.beamtime:
        services.adapters.state.mark_followed(command.beamtime)
    running = services.contact(services.transfer_system, services.adapters.transfer.progress).state
    if previous is None or previous.name == selected(step).name or running != TransferState.RUNNING:
        return outcome
    return Outcome(
        f"{outcome.message}; the transfer started for {previous.name} still runs: DaqStop it, then DaqStart "
        "for the new experiment", warning=True,
    )  # fmt: skip


def create_manual(step: Step, command: CreateManual) -> Outcome:
    """Create (or complete) an experiment from the `Manual:*` PVs, for commissioning."""
    request, settings = command.request, step.services.settings
    start, end = _manual_dates(step, request.start, request.end)
    badges = parse_badges(request.badges, "Manual:Badges") if request.badges.strip() else ()
    last_name = request.last_name.strip() or "Staff"
    # Manual:GUP 0 is "no proposal": the name and the layout still take its number (`...-Staff-0`), the
    # proposal PVs and the DM record none.
    number = str(request.gup)
    name = experiment_name(
        settings.dm.experiment_name, year_month=year_month(start), pi_last_name=last_name, gup=number
    )
    person = Person(badges[0] if badges else "", request.first_name.strip(), last_name, request.email.strip(),
                    request.institution.strip(), is_pi=True)  # the first badge's owner  # fmt: skip
    known = known_people(step)  # the other badges' names and e-mails, where the schedule has them
    others = tuple(replace(known.get(badge, Person(badge)), is_pi=False) for badge in badges[1:])
    people = [ExperimentUser.from_person(p, "manual") for p in (person, *others) if p.badge]
    title = request.title.strip() or f"{last_name} manual experiment"
    gup = number if request.gup else ""
    experiment = Experiment(
        name=name,
        title=title,
        gup=gup,
        start=start,
        end=end,
        year_month=year_month(start),
        data_directory=str(settings.dm.data_top_dir / name),
    )
    experiment = _placed(step, experiment, last_name, number)
    proposal = Proposal(gup, title, people=(person, *others), kind="Manual")
    return _create(step, experiment, people, Beamtime(proposal, start, end))


def _placed(step: Step, experiment: Experiment, pi_last_name: str, gup: str, run: str | None = None) -> Experiment:
    """`experiment` with its storage placed by `dm.layout` (local backend; the APS DM system places its own).

    `{run}` is the run of the schedule the beamtime was found in; for a manual experiment (or when
    that is not known), the schedule's run that holds the experiment's start; none: refused.
    """
    settings = step.services.settings
    dm = settings.dm
    if dm.backend != "local":
        return experiment
    if "run" in layout_placeholders(dm.layout) and not run:
        run = _run_holding(step, experiment)
    storage = storage_location(dm.layout, str(dm.storage_root), experiment, beamline=settings.beamline.name,
                               run=run or "", pi_last_name=pi_last_name, gup=gup)  # fmt: skip
    return replace(experiment, storage_directory=storage)


def _run_holding(step: Step, experiment: Experiment) -> str:
    start = experiment.start
    scheduled = step.state.scheduled.run if step.state.scheduled else None
    if start is not None and scheduled is not None and scheduled.contains(start):
        return scheduled.name
    services = step.services
    found = select_run(services.contact("Scheduling", services.adapters.scheduling.runs), start) if start else None
    if found is None:
        when = start.date().isoformat() if start else "its start"
        raise InputError(
            f"dm.layout places storage by {{run}}, but no run of the schedule holds {when} "
            f"(the start of {experiment.name}); nothing created"
        )
    return found.name


def _manual_dates(step: Step, start_text: str, end_text: str) -> tuple[datetime, datetime]:
    def day(text: str, what: str) -> date | None:
        if not text.strip():
            return None
        try:
            return date.fromisoformat(text.strip())
        except ValueError:
            raise InputError(f"{what} {text!r} is not a date YYYY-MM-DD") from None

    tz = step.services.tz
    today = step.services.clock().astimezone(tz).date()
    start = day(start_text, "Manual:Start") or today.replace(day=1)
    end = day(end_text, "Manual:End") or start + timedelta(days=14)
    if end <= start:
        raise InputError(f"Manual:End {end} is not after Manual:Start {start}")
    return (datetime.combine(start, time(), tz), datetime.combine(end, time(), tz))


def _create(
    step: Step,
    experiment: Experiment,
    people: list[ExperimentUser],
    proposal: Beamtime,
    *,
    reusing: str = "",
    why: str = "",
) -> Outcome:
    """Create (or complete) `experiment` for `proposal` and select it; the proposal PVs then show it.
    `reusing`: the name this IOC would have given it, when `experiment` was made for it under another;
    `why`: which beamtime it is for, when that is not the one running now."""
    services = step.services
    store = services.adapters.state
    users = with_contacts(people, services.settings.beamline.contacts)
    try:
        experiment, created = services.contact("DM", services.adapters.dm.create_experiment, experiment)
        partial = ""
    except PartialAccess as error:  # made, but a unix group it names does not exist: MINOR
        (experiment, created), partial = error.done, f"; {error}"
        services.noted("DM", True)  # DM answered: its Health stays good
    store.keep_proposal(experiment.name, proposal)
    store.select(experiment.name)  # selected even if a later step fails: a rerun completes
    added, details, warning = give_access(step, experiment, users)
    details, warning = details + partial, warning or bool(partial)
    if created:
        users_text = plural(len(users), "user")
        message = (f"created experiment {experiment.name}{why} with {users_text}; "
                   f"storage {experiment.storage_directory}")  # fmt: skip
    elif reusing:
        message = (f"reused experiment {experiment.name} made for this beamtime{why} (this IOC names it "
                   f"{reusing}): selected it; users added: {', '.join(added) or 'none'}")  # fmt: skip
    else:
        message = (f"experiment {experiment.name} exists: selected it{why}; "
                   f"users added: {', '.join(added) or 'none'}")  # fmt: skip
    return Outcome(message + details, warning=warning)


def select(step: Step, command: Select) -> Outcome:
    """Select an existing experiment; the proposal PVs show the proposal it was made for."""
    services = step.services
    store = services.adapters.state
    name = check_name(command.experiment, "SelectName")
    experiment = services.contact("DM", services.adapters.dm.get_experiment, name)
    if experiment is None:
        raise InputError(f"no experiment named {name}: Experiments lists the station's experiments")
    proposal, warning = store.proposal(name), ""
    if proposal is None and experiment.gup:  # made before proposals were kept, or in the APS DM system
        try:
            found = beamtime_of(step, experiment.gup, experiment.start)
            proposal = found.beamtime if found else None
            warning = "" if found else f"; proposal {experiment.gup} is not in the schedule"
        except SchedulingError as error:
            warning = f"; its proposal {experiment.gup} was not read: {error}"
    if proposal is not None:
        store.keep_proposal(name, proposal)
    proposal = proposal or proposal_of(experiment)  # from the DM record: not kept, the schedule may answer later
    store.select(name)
    load_selection(step)
    shown = f"its proposal {proposal.gup}" if proposal.gup else "its people (no proposal)"
    return Outcome(f"selected {name}; the proposal PVs show {shown}{warning}", warning=bool(warning))


def delete(step: Step, command: Delete) -> Outcome:
    """Delete the selected experiment when `DeleteConfirm` equals its name."""
    services = step.services
    experiment = selected(step)
    if command.confirm.strip() != experiment.name:
        raise InputError(f"DeleteConfirm must equal ExperimentName ({experiment.name}) to delete it; nothing deleted")
    transfer = services.adapters.transfer
    if services.contact(services.transfer_system, transfer.progress).state != TransferState.STOPPED:
        raise InputError("a transfer is running (or retrying after an error): DaqStop first; nothing deleted")
    revoked = revoke(step, experiment)
    try:
        removed, warning = services.contact("DM", services.adapters.dm.delete_experiment, experiment.name), False
    except PartialAccess as error:  # deleted, but files stayed in the storage set aside: MINOR, naming them
        services.noted("DM", True)
        removed, warning = f"{error.done}; {error}", True
    in_background(step, command.name)  # the storage's removal: its end is news of this Delete
    transfer.forget(sources(step, experiment))  # a re-created experiment gets its files again
    services.adapters.state.forget_experiment(experiment.name)
    services.adapters.state.select("")
    load_selection(step)
    return Outcome(removed + revoked, warning=warning)


def _proposal_evidence(record: Experiment, beamtime: Beamtime) -> int | None:
    """How surely `record` was made for the proposal of `beamtime`: 0 by the GUP DM holds, 1 by the GUP
    ending its name (DMagic's `{year_month}-{last name}-{gup}`); None: no GUP says so."""
    if record.gup:
        return 0 if record.gup == beamtime.gup else None
    return 1 if record.name.rsplit("-", 1)[-1] == beamtime.gup else None


def _same_title(record: Experiment, beamtime: Beamtime) -> bool:
    """`record`, with no GUP in DM, has the proposal's title: maybe this beamtime's, but a title is no proof."""
    title = record.title.strip()
    return not record.gup and bool(title) and title == beamtime.title.strip()


def _same_beamtime(record: Experiment, beamtime: Beamtime, run: Run | None, tz: tzinfo) -> bool:
    """`record` started in `run` (when known) and in the beamtime's month, or within its days; an experiment
    DM gives no start of is judged by its year-month alone."""
    if record.start is None:
        return bool(record.year_month) and record.year_month == beamtime.year_month
    start = _day(record.start, tz)
    if run is not None and not _day(run.start, tz) <= start <= _day(run.end, tz):
        return False
    month = record.year_month or year_month(start)
    return month == beamtime.year_month or _day(beamtime.start, tz) <= start <= _day(beamtime.end, tz)


def _day(moment: datetime, tz: tzinfo) -> date:
    """The beamline's date of `moment` (DM gives dates, at midnight, without a time of day)."""
    return moment.astimezone(tz).date() if moment.tzinfo else moment.date()
