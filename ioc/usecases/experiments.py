"""Experiments in DM: Create, CreateManual, Select, AddUser, RemoveUser, Delete."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta, tzinfo

from ..domain.model import (
    Beamtime,
    DMError,
    Experiment,
    ExperimentUser,
    GlobusError,
    InputError,
    PartialAccess,
    Person,
    Run,
    SchedulingError,
    check_name,
    dm_username,
    experiment_name,
    layout_placeholders,
    parse_badges,
    plural,
    proposal_of,
    select_run,
    storage_location,
    year_month,
)
from ..domain.ports import (
    TransferState,
)
from .base import BeamlineCore, ManualRequest, Outcome

log = logging.getLogger(__name__)


class ExperimentCases(BeamlineCore):
    """Experiments in DM: Create, CreateManual, Select, AddUser, RemoveUser, Delete."""

    # ------------------------------------------------------------------ experiments

    def create(self) -> Outcome:
        """Create (or complete) the DM experiment of the beamtime the schedule shows now, and select it."""
        beamtime = self.state.scheduled.beamtime if self.state.scheduled else None
        if beamtime is None:
            raise InputError("no beamtime is scheduled now (Schedule:ProposalNumber is empty): Refresh, or use "
                             "CreateManual")  # fmt: skip
        pi = beamtime.pi
        name = experiment_name(
            self.settings.dm.experiment_name,
            year_month=beamtime.year_month,
            pi_last_name=pi.last_name if pi else "",
            gup=beamtime.gup,
        )
        people = [ExperimentUser.from_person(p, "proposal") for p in beamtime.people_pi_first]
        people += [ExperimentUser.from_person(p, "esaf") for p in beamtime.esaf_people]
        experiment = Experiment(
            name=name,
            title=beamtime.title,
            gup=beamtime.gup,
            esaf=beamtime.esaf,
            start=beamtime.start,
            end=beamtime.end,
            year_month=beamtime.year_month,
            data_directory=str(self.settings.dm.data_top_dir / name),
        )
        run = self.state.scheduled.run if self.state.scheduled else None
        experiment = self._placed(experiment, pi.last_name if pi else "", beamtime.gup, run.name if run else None)
        made, titled = self._made_for(experiment, beamtime, run)
        if made is not None:
            log.info("Create: experiment %s was made for beamtime %s; reusing it instead of making %s",
                     made.name, beamtime.gup, name)  # fmt: skip
            data = made.data_directory or str(self.settings.dm.data_top_dir / made.name)
            experiment = replace(experiment, name=made.name, storage_directory=made.storage_directory,
                                 data_directory=data)  # fmt: skip
        outcome = self._create(experiment, people, beamtime, reusing=name if made is not None else "",
                               why=self._offset_why(beamtime))  # fmt: skip
        if made is not None or not titled:
            return outcome
        found = (f"an experiment with this title exists: {titled[0]}" if len(titled) == 1
                 else f"experiments with this title exist: {', '.join(titled)}")  # fmt: skip
        return Outcome(f"{outcome.message}; {found}; not reused (no GUP); Select it if it is this beamtime's",
                       warning=True)  # fmt: skip

    def _offset_why(self, beamtime: Beamtime) -> str:
        """A Status fragment naming the beamtime Create took when TimeOffsetDays made it another than now's."""
        offset = self.state.scheduled.offset_days if self.state.scheduled else 0.0
        if not offset:
            return ""
        return f" for the beamtime of {beamtime.start.astimezone(self.tz).date()} (TimeOffsetDays {offset:g})"

    def _made_for(
        self, experiment: Experiment, beamtime: Beamtime, run: Run | None
    ) -> tuple[Experiment | None, list[str]]:
        """An experiment of the station made for `beamtime` under another name (by DMagic, which spells the
        PI's name otherwise, or by hand), or None when one has the name this IOC gives it, or none fits;
        and the names of those that share only the proposal's title (never reused: another proposal may
        have the same title, "Commissioning"; Status names them).

        Made for it: the same proposal by its GUP (the one DM holds, else the one that ends the name as
        DMagic names experiments), in the same run and month (or started within the beamtime). Of several,
        the surest, then the nearest in time.
        """
        records = self._contact("DM", self.adapters.dm.station_experiments)
        if any(record.name == experiment.name for record in records):
            return None, []
        fits, titled = [], []
        for record in records:
            if not _same_beamtime(record, beamtime, run, self.tz):
                continue
            evidence = _proposal_evidence(record, beamtime)
            if evidence is not None:
                days = abs((_day(record.start, self.tz) - _day(beamtime.start, self.tz)).days) if record.start else 1e9
                fits.append((evidence, days, record.name, record))
            elif _same_title(record, beamtime):
                titled.append(record.name)
        return (min(fits, key=lambda fit: fit[:3])[3] if fits else None), sorted(titled)

    def follow_schedule(self) -> Outcome:
        """dm.follow_schedule: create (or select) the experiment of the beamtime that started, as Create
        would; a transfer still running for the previous experiment is left alone, with a warning."""
        previous = self.state.experiment
        outcome = self.create()
        if self.state.to_follow:
            self.adapters.state.mark_followed(self.state.to_follow)
        self._change(to_follow="")
        running = self._contact(self._transfer_system, self.adapters.transfer.progress).state
        if previous is None or previous.name == self._selected().name or running != TransferState.RUNNING:
            return outcome
        return Outcome(
            f"{outcome.message}; the transfer started for {previous.name} still runs: DaqStop it, then DaqStart "
            "for the new experiment", warning=True,
        )  # fmt: skip

    def create_manual(self, request: ManualRequest) -> Outcome:
        """Create (or complete) an experiment from the `Manual:*` PVs, for commissioning."""
        start, end = self._manual_dates(request.start, request.end)
        badges = parse_badges(request.badges, "Manual:Badges") if request.badges.strip() else ()
        last_name = request.last_name.strip() or "Staff"
        # Manual:GUP 0 is "no proposal": the name and the layout still take its number (`...-Staff-0`), the
        # proposal PVs and the DM record none.
        number = str(request.gup)
        name = experiment_name(
            self.settings.dm.experiment_name, year_month=year_month(start), pi_last_name=last_name, gup=number
        )
        person = Person(badges[0] if badges else "", request.first_name.strip(), last_name, request.email.strip(),
                        request.institution.strip(), is_pi=True)  # the first badge's owner  # fmt: skip
        known = self._known_people()  # the other badges' names and e-mails, where the schedule has them
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
            data_directory=str(self.settings.dm.data_top_dir / name),
        )
        experiment = self._placed(experiment, last_name, number)
        proposal = Beamtime(gup, title, start, end, people=(person, *others), proposal_type="Manual")
        return self._create(experiment, people, proposal)

    def _placed(self, experiment: Experiment, pi_last_name: str, gup: str, run: str | None = None) -> Experiment:
        """`experiment` with its storage placed by `dm.layout` (local backend; the APS DM system places its own).

        `{run}` is the run of the schedule the beamtime was found in; for a manual experiment (or when
        that is not known), the schedule's run that holds the experiment's start; none: refused.
        """
        dm = self.settings.dm
        if dm.backend != "local":
            return experiment
        if "run" in layout_placeholders(dm.layout) and not run:
            run = self._run_holding(experiment)
        storage = storage_location(dm.layout, str(dm.storage_root), experiment, beamline=self.settings.beamline.name,
                                   run=run or "", pi_last_name=pi_last_name, gup=gup)  # fmt: skip
        return replace(experiment, storage_directory=storage)

    def _run_holding(self, experiment: Experiment) -> str:
        start = experiment.start
        scheduled = self.state.scheduled.run if self.state.scheduled else None
        if start is not None and scheduled is not None and scheduled.contains(start):
            return scheduled.name
        found = select_run(self._contact("Scheduling", self.adapters.scheduling.runs), start) if start else None
        if found is None:
            when = start.date().isoformat() if start else "its start"
            raise InputError(
                f"dm.layout places storage by {{run}}, but no run of the schedule holds {when} "
                f"(the start of {experiment.name}); nothing created"
            )
        return found.name

    def _manual_dates(self, start_text: str, end_text: str) -> tuple[datetime, datetime]:
        def day(text: str, what: str) -> date | None:
            if not text.strip():
                return None
            try:
                return date.fromisoformat(text.strip())
            except ValueError:
                raise InputError(f"{what} {text!r} is not a date YYYY-MM-DD") from None

        today = self.clock().astimezone(self.tz).date()
        start = day(start_text, "Manual:Start") or today.replace(day=1)
        end = day(end_text, "Manual:End") or start + timedelta(days=14)
        if end <= start:
            raise InputError(f"Manual:End {end} is not after Manual:Start {start}")
        return (datetime.combine(start, time(), self.tz), datetime.combine(end, time(), self.tz))

    def _create(
        self,
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
        dm = self.adapters.dm
        contacts = [ExperimentUser(dm_username(b), source="contact") for b in self.settings.beamline.contacts]
        unique: dict[str, ExperimentUser] = {}
        for user in people + contacts:  # people first (the PI first); a contact on the proposal stays there
            unique.setdefault(user.username, user)
        users = list(unique.values())
        try:
            experiment, created = self._contact("DM", dm.create_experiment, experiment)
            partial = ""
        except PartialAccess as error:  # made, but a unix group it names does not exist: MINOR
            (experiment, created), partial = error.done, f"; {error}"
            self._contacts.put(("DM", True))  # DM answered: its Health stays good
        self.adapters.state.keep_proposal(experiment.name, proposal)
        self.adapters.state.select(experiment.name)  # selected even if a later step fails: a rerun completes
        added, details, warning = self._give_access(experiment, users)
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

    def _give_access(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> tuple[list[str], str, bool]:
        """DM access, then Globus access for every one of `users` DM has (not only the new ones: a
        rerun after a Globus failure completes). Returns (added, a Status fragment, warning); the
        selection's PVs are read again whatever happens."""
        try:
            added, problem = self._add_users(experiment, users)
            granted = self._grant(experiment, self._with_dm_access(experiment.name, users))
        finally:
            self.load_selection()
        return added, granted + problem, bool(problem)

    def _add_users(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> tuple[list[str], str]:
        """Add users in DM: (the usernames added, a warning fragment for those DM refused).

        A user DM refuses (e.g. without a DM account) is a warning, not a failure: the others get
        access and the command goes on, so one experimenter does not block the experiment.
        """
        try:
            return self._contact("DM", self.adapters.dm.add_users, experiment.name, users), ""
        except PartialAccess as error:  # added, but some have no unix account: MINOR, naming them
            self._contacts.put(("DM", True))
            return list(error.done), f"; {error}"
        except DMError as error:
            if error.done is None:
                raise
            return list(error.done), f"; not all users added: {error}"

    def _with_dm_access(self, name: str, users: Sequence[ExperimentUser]) -> list[ExperimentUser]:
        """Those of `users` that experiment `name` has in DM now (read again after adding them)."""
        experiment = self._contact("DM", self.adapters.dm.get_experiment, name)
        have = set(experiment.usernames) if experiment else set()
        return [u for u in users if u.username in have]

    def _grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> str:
        """Globus access for `users`; a sentence fragment for Status."""
        access = self.adapters.access
        if access is None or not any(u.email.strip() for u in users):
            return ""  # no Globus call: Globus:Health stays what the last contact said
        try:
            rules = self._contact("Globus", access.grant, experiment, users)
        except GlobusError as error:
            if error.done:  # rules made before the failure: recorded, so RemoveUser/Delete can revoke them
                self.adapters.state.record_rules(experiment.name, error.done)
            raise
        self.adapters.state.record_rules(experiment.name, rules)
        return f"; Globus access for {plural(len(rules), 'user')}" if rules else ""

    def select(self, name: str) -> Outcome:
        """Select an existing experiment; the proposal PVs show the proposal it was made for."""
        name = check_name(name, "SelectName")
        experiment = self._contact("DM", self.adapters.dm.get_experiment, name)
        if experiment is None:
            raise InputError(f"no experiment named {name}: Experiments lists the station's experiments")
        proposal, warning = self.adapters.state.proposal(name), ""
        if proposal is None and experiment.gup:  # made before proposals were kept, or in the APS DM system
            try:
                found = self._beamtime_of(experiment.gup, experiment.start)
                proposal = found.beamtime if found else None
                warning = "" if found else f"; proposal {experiment.gup} is not in the schedule"
            except SchedulingError as error:
                warning = f"; its proposal {experiment.gup} was not read: {error}"
        if proposal is not None:
            self.adapters.state.keep_proposal(name, proposal)
        proposal = proposal or proposal_of(experiment)  # from the DM record: not kept, the schedule may answer later
        self.adapters.state.select(name)
        self.load_selection()
        shown = f"its proposal {proposal.gup}" if proposal.gup else "its people (no proposal)"
        return Outcome(f"selected {name}; the proposal PVs show {shown}{warning}", warning=bool(warning))

    def add_users(self, badges_text: str) -> Outcome:
        """Give the badges in `Badges` access to the selected experiment."""
        badges = parse_badges(badges_text)
        experiment = self._selected()
        known = self._known_people()
        users = [
            ExperimentUser.from_person(known[b], "added")
            if b in known
            else ExperimentUser(dm_username(b), source="added")
            for b in badges
        ]
        added, details, warning = self._give_access(experiment, users)
        if added:
            message = f"gave {', '.join(added)} access to {experiment.name}"
        else:
            message = f"{', '.join(u.username for u in users)} already had access to {experiment.name}"
        return Outcome(message + details, warning=warning)

    def _known_people(self) -> dict[str, Person]:
        """The people of the selected experiment's proposal and of the scheduled one, by badge (one known by
        badge alone, as a manual experiment may list them, never hides the same person known by name)."""
        scheduled = self.state.scheduled.beamtime if self.state.scheduled else None
        known: dict[str, Person] = {}
        for beamtime in filter(None, (scheduled, self.state.proposal)):
            for person in (*beamtime.people, *beamtime.esaf_people):
                if person.full_name or person.badge not in known:
                    known[person.badge] = person
        return known

    def remove_users(self, badges_text: str) -> Outcome:
        """Take access to the selected experiment from the badges in `Badges`."""
        badges = parse_badges(badges_text)
        experiment = self._selected()
        usernames = [dm_username(b) for b in badges]
        revoked = self._revoke(experiment, usernames)
        removed = self._contact("DM", self.adapters.dm.remove_users, experiment.name, usernames)
        self.load_selection()
        if not removed:
            return Outcome(f"none of {', '.join(usernames)} had access to {experiment.name}")
        return Outcome(f"removed access of {', '.join(removed)} from {experiment.name}{revoked}")

    def _revoke(self, experiment: Experiment, usernames: Sequence[str] | None = None) -> str:
        access, state = self.adapters.access, self.adapters.state
        if access is None:
            return ""
        rules = state.rules(experiment.name)
        if usernames is not None:
            rules = {u: rule for u, rule in rules.items() if u in usernames}
        if not rules:
            return ""
        removed = self._contact("Globus", access.revoke, experiment, rules)
        state.forget_rules(experiment.name, removed)
        return f"; {len(removed)} Globus rules deleted"

    def delete(self, confirm: str) -> Outcome:
        """Delete the selected experiment when `DeleteConfirm` equals its name."""
        experiment = self._selected()
        if confirm.strip() != experiment.name:
            raise InputError(
                f"DeleteConfirm must equal ExperimentName ({experiment.name}) to delete it; nothing deleted"
            )
        transfer = self.adapters.transfer
        if self._contact(self._transfer_system, transfer.progress).state != TransferState.STOPPED:
            raise InputError("a transfer is running (or retrying after an error): DaqStop first; nothing deleted")
        revoked = self._revoke(experiment)
        removed = self._contact("DM", self.adapters.dm.delete_experiment, experiment.name)
        transfer.forget(self._sources(experiment))  # a re-created experiment gets its files again
        self.adapters.state.forget_experiment(experiment.name)
        self.adapters.state.select("")
        self.load_selection()
        return Outcome(removed + revoked)


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
