"""The use cases behind the command PVs, in plain blocking Python: no PVs, no caproto, no adapters.

`Beamline` holds the adapters (through the ports) and the state the PVs show
(`BeamlineState`: the current proposal, the selected experiment, ...). Each
public method is one command or background job: it validates its input before
changing anything, calls the adapters, replaces the state, and returns an
`Outcome` or raises a `DMagicError` whose message is fit for `Status`. The
engine (`ioc/engine.py`) runs them one at a time in a worker thread, so the
state needs no lock, and reads `contacts()` for the Health PVs afterwards.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from .config import TAG_FIELDS, Settings
from .domain.model import (
    Beamtime,
    CurrentProposal,
    DMError,
    EmailError,
    Experiment,
    ExperimentUser,
    GlobusError,
    InputError,
    Person,
    SchedulingError,
    ServiceError,
    MissingPVs,
    UserInfo,
    check_name,
    dm_username,
    experiment_name,
    find_beamtime,
    look_moment,
    parse_badges,
    plural,
    select_beamtime,
    select_run,
    year_month,
)
from .domain.ports import (
    Access,
    DataManagement,
    Mailer,
    SchedulingSource,
    StateStore,
    TagTarget,
    Transfer,
    TransferProgress,
    TransferState,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SYSTEMS = ("Scheduling", "DM", "Globus", "Email")  # the outside systems, each with a Health PV


@dataclass(frozen=True)
class Outcome:
    """What a use case did, in a sentence for `Status`; `warning` makes it MINOR."""

    message: str
    warning: bool = False


@dataclass(frozen=True)
class ManualRequest:
    """The `Manual:*` PVs, as CreateManual reads them."""

    last_name: str = ""
    first_name: str = ""
    institution: str = ""
    email: str = ""
    title: str = ""
    gup: int = 0
    badges: str = ""
    start: str = ""
    end: str = ""


@dataclass
class Adapters:
    scheduling: SchedulingSource
    dm: DataManagement
    state: StateStore
    transfer: Transfer
    tag: TagTarget
    access: Access | None = None
    mailer: Mailer | None = None


@dataclass(frozen=True)
class BeamlineState:
    """What the PVs show, replaced whole by the use cases: the event loop always reads one snapshot."""

    current: CurrentProposal | None = None
    experiment: Experiment | None = None
    experiments: tuple[str, ...] = ()
    emailed: tuple[str, ...] = ()
    globus_url: str = ""


class Beamline:
    """The beamline's scheduling and data management, as commands."""

    def __init__(self, settings: Settings, adapters: Adapters, clock: Callable[[], datetime] | None = None):
        self.settings = settings
        self.adapters = adapters
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.state = BeamlineState()
        self._contacts: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()  # (system, answered)
        self._progress = TransferProgress()

    def _change(self, **changes) -> None:
        """Replace the state the PVs show, with `changes`."""
        self.state = replace(self.state, **changes)

    def contacts(self) -> list[tuple[str, bool]]:
        """The contacts with outside systems since the last call: (system, answered), oldest first."""
        taken = []
        while not self._contacts.empty():
            taken.append(self._contacts.get_nowait())
        return taken

    # ------------------------------------------------------------------ helpers

    def _contact(self, system: str | None, call: Callable[..., T], *args, **kwargs) -> T:
        """Call an adapter of `system` and record the contact for its Health PV (None: no outside system)."""
        try:
            result = call(*args, **kwargs)
        except ServiceError as error:
            if error.system or system:
                self._contacts.put((error.system or system, False))
            raise
        if system:
            self._contacts.put((system, True))
        return result

    @property
    def tz(self):
        return self.settings.beamline.tz

    def _selected(self) -> Experiment:
        experiment = self.state.experiment
        if experiment is None and self.adapters.state.selected():
            self.load_selection()  # DM was unreachable at startup: read the selection now
            experiment = self.state.experiment
        if experiment is None:
            raise InputError("no experiment is selected: use Create, CreateManual or Select first")
        return experiment

    def read_selection(self) -> Outcome:
        """At start: the selected experiment, as the registry has it."""
        self.load_selection()
        name = self.state.experiment.name if self.state.experiment else ""
        return Outcome(f"selected experiment: {name}" if name else "no experiment selected")

    def load_selection(self) -> None:
        """Read the selected experiment, its e-mailed users and the station's list from DM."""
        dm, state = self.adapters.dm, self.adapters.state
        name = state.selected()
        experiment = self._contact("DM", dm.get_experiment, name) if name else None
        access = self.adapters.access
        self._change(
            experiment=experiment,
            emailed=tuple(state.emailed(name)) if experiment else (),
            globus_url=access.url(experiment) if access and experiment else "",
        )
        self._change(experiments=tuple(self._contact("DM", dm.list_experiments)))

    # ------------------------------------------------------------------ scheduling

    def refresh(self, offset_days: float) -> Outcome:
        """Read the beamtime at now + offset from the scheduling system and publish it."""
        now = self.clock()
        moment = look_moment(now, offset_days).astimezone(self.tz)
        scheduling = self.adapters.scheduling
        run = select_run(self._contact("Scheduling", scheduling.runs), moment)
        beamtimes = self._contact("Scheduling", scheduling.beamtimes, run) if run else []
        beamtime = select_beamtime(beamtimes, moment)
        warning = ""
        if beamtime is not None and beamtime.esaf:
            beamtime, warning = self._with_esaf(beamtime)
        self._change(current=CurrentProposal(run, beamtime, now.astimezone(self.tz)))
        when = moment.strftime("%Y-%m-%d %H:%M %Z")
        if run is None:
            return Outcome(f"no run of the schedule contains {when}", warning=True)
        if beamtime is None:
            return Outcome(f"run {run.name}: no beamtime scheduled at {when}", warning=True)
        pi = beamtime.pi
        message = f"proposal {beamtime.gup} ({pi.last_name if pi else 'no PI'}), run {run.name}{warning}"
        return Outcome(message, warning=bool(warning))

    def _with_esaf(self, beamtime: Beamtime) -> tuple[Beamtime, str]:
        """Add the ESAF's experimenters and DOI where the DM backend knows them."""
        try:
            people, doi = self._contact("DM", self.adapters.dm.esaf, beamtime.esaf)
        except ServiceError as error:
            return beamtime, f"; ESAF {beamtime.esaf} not read: {error}"
        known = {p.badge for p in beamtime.people}
        extra = tuple(p for p in people if p.badge not in known)
        return replace(beamtime, esaf_doi=doi, esaf_people=extra), ""

    def _beamtime_of(self, gup: str, start: datetime | None) -> CurrentProposal | None:
        """The run and scheduled beamtime of proposal `gup` around `start`, if the schedule has it."""
        scheduling = self.adapters.scheduling
        runs = self._contact("Scheduling", scheduling.runs)
        if start is not None:
            runs = [run for run in runs if run.contains(start)] or runs
        for run in runs:
            found = find_beamtime(self._contact("Scheduling", scheduling.beamtimes, run), gup)
            if found is not None:
                return CurrentProposal(run, found, self.clock().astimezone(self.tz))
        return None

    def tag(self, prefix: str) -> Outcome:
        """Write the user-info PVs into the IOC at `prefix` (e.g. tomoScan), under the names `tag.fields` gives.

        A PV the target lacks is left out: silently when its absence is normal
        (ESAFDOINumber: tomoScan has none), with a warning naming it otherwise;
        when none answers, the adapter's error says so and nothing is written.
        """
        prefix = prefix.strip()
        if not prefix:
            raise InputError("TagPrefix is empty: set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
        current = self.state.current
        if current is None or current.beamtime is None:
            raise InputError("no proposal is published to tag: Refresh or Select first")
        info = UserInfo.of(current)
        settings = self.settings.tag
        to_write = {pv: getattr(info, TAG_FIELDS[name]) for name, pv in settings.targets().items()}
        try:
            cut, missing = self.adapters.tag.write(prefix, to_write), ()
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
        message = "; ".join([f"tagged {prefix} with proposal {info.proposal}", *warnings])
        return Outcome(message, warning=bool(warnings))

    # ------------------------------------------------------------------ experiments

    def create(self) -> Outcome:
        """Create (or complete) the DM experiment of the current proposal and select it."""
        current = self.state.current
        beamtime = current.beamtime if current else None
        if beamtime is None:
            raise InputError("no proposal is active now (ProposalActive is No): Refresh, or use CreateManual")
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
        return self._create(experiment, people)

    def create_manual(self, request: ManualRequest) -> Outcome:
        """Create (or complete) an experiment from the `Manual:*` PVs, for commissioning."""
        start, end = self._manual_dates(request.start, request.end)
        badges = parse_badges(request.badges, "Manual:Badges") if request.badges.strip() else ()
        last_name = request.last_name.strip() or "Staff"
        name = experiment_name(
            self.settings.dm.experiment_name, year_month=year_month(start), pi_last_name=last_name, gup=str(request.gup)
        )
        people = [ExperimentUser(dm_username(b), source="manual") for b in badges]
        if people:  # the Manual:* person is the first badge's owner
            first = Person(badges[0], request.first_name.strip(), last_name, request.email.strip(),
                           request.institution.strip())  # fmt: skip
            people[0] = ExperimentUser.from_person(first, "manual")
        experiment = Experiment(
            name=name,
            title=request.title.strip() or f"{last_name} manual experiment",
            gup=str(request.gup) if request.gup else "",
            start=start,
            end=end,
            year_month=year_month(start),
            data_directory=str(self.settings.dm.data_top_dir / name),
        )
        return self._create(experiment, people)

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

    def _create(self, experiment: Experiment, people: list[ExperimentUser]) -> Outcome:
        dm = self.adapters.dm
        contacts = [ExperimentUser(dm_username(b), source="contact") for b in self.settings.beamline.contacts]
        users = list({u.username: u for u in reversed(people + contacts)}.values())[::-1]
        experiment, created = self._contact("DM", dm.create_experiment, experiment)
        self.adapters.state.select(experiment.name)  # selected even if a later step fails: a rerun completes
        added, details, warning = self._give_access(experiment, users)
        if created:
            message = (
                f"created experiment {experiment.name} with {plural(len(users), 'user')}; storage {experiment.storage_directory}"
            )
        else:
            message = f"experiment {experiment.name} exists: selected it; users added: {', '.join(added) or 'none'}"
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
        """Select an existing experiment and publish the proposal it belongs to."""
        name = check_name(name, "SelectName")
        experiment = self._contact("DM", self.adapters.dm.get_experiment, name)
        if experiment is None:
            raise InputError(f"no experiment named {name}: Experiments lists the station's experiments")
        self.adapters.state.select(name)
        self.load_selection()
        if not experiment.gup:
            return Outcome(f"selected {name} (no proposal)")
        try:
            found = self._beamtime_of(experiment.gup, experiment.start)
        except SchedulingError as error:
            return Outcome(f"selected {name}; its proposal {experiment.gup} was not read: {error}", warning=True)
        if found is None:
            return Outcome(f"selected {name}; proposal {experiment.gup} is not in the schedule", warning=True)
        self._change(current=found)
        return Outcome(f"selected {name} and published its proposal {experiment.gup}")

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
        beamtime = self.state.current.beamtime if self.state.current else None
        if beamtime is None:
            return {}
        return {p.badge: p for p in (*beamtime.people, *beamtime.esaf_people)}

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
        if transfer.progress().state != TransferState.STOPPED:
            raise InputError("a transfer is running (or retrying after an error): DaqStop first; nothing deleted")
        revoked = self._revoke(experiment)
        removed = self._contact("DM", self.adapters.dm.delete_experiment, experiment.name)
        transfer.forget(self._sources(experiment))  # a re-created experiment gets its files again
        self.adapters.state.forget_experiment(experiment.name)
        self.adapters.state.select("")
        self.load_selection()
        return Outcome(removed + revoked)

    # ------------------------------------------------------------------ e-mail

    def email(self, everyone: bool) -> Outcome:
        """Send the data-access message to the selected experiment's users: those not yet e-mailed,
        or `everyone`."""
        mailer = self.adapters.mailer
        if mailer is None:
            raise InputError("e-mail is not enabled (email.enabled: false in the config)")
        experiment = self._selected()
        already = set() if everyone else set(self.state.emailed)
        users = [u for u in experiment.users if u.username not in already]
        skipped = [u.username for u in users if not u.email]
        recipients = [u for u in users if u.email]
        if not recipients:
            reason = "everyone with an address was already e-mailed" if already else "nobody has an e-mail address"
            return Outcome(
                f"e-mail: nothing sent, {reason}" + (f"; no address: {', '.join(skipped)}" if skipped else "")
            )
        addresses = [(u.username, u.email) for u in recipients]
        delivery = self._contact("Email", mailer.send, addresses, self._email_values(experiment))
        if delivery.delivered:
            self.adapters.state.mark_emailed(experiment.name, delivery.delivered)
        self.load_selection()
        failed = delivery.failed or {}
        parts = [f"e-mailed {plural(len(delivery.delivered), 'user')} of {experiment.name}"]
        if skipped:
            parts.append(f"no address: {', '.join(skipped)}")
        if failed:
            parts.append("failed: " + ", ".join(f"{u} ({why})" for u, why in failed.items()))
        if failed and not delivery.delivered:
            raise EmailError("; ".join(parts))
        return Outcome("; ".join(parts), warning=bool(failed or skipped))

    def _email_values(self, experiment: Experiment) -> dict[str, str]:
        pi = next((u for u in experiment.users if u.source in ("proposal", "manual")), None)
        return {
            "experiment": experiment.name,
            "title": experiment.title,
            "pi": pi.name if pi else "",
            "beamline": self.settings.beamline.name,
            "globus_url": self.state.globus_url,
            "storage_directory": experiment.storage_directory,
        }

    # ------------------------------------------------------------------ data transfer

    def _sources(self, experiment: Experiment) -> dict[str, str]:
        storage = Path(experiment.storage_directory)
        raw = experiment.data_directory or str(self.settings.dm.data_top_dir / experiment.name)
        return {raw: str(storage / "data"), f"{raw}_rec": str(storage / "analysis")}

    @property
    def _transfer_system(self) -> str | None:
        """The system a transfer call contacts; None for the built-in engine, which is no outside system."""
        if self.settings.dm.transfer == "globus":
            return "Globus"
        return "DM" if self.settings.dm.backend == "aps" else None

    def _transfer(self, *, once: bool) -> str:
        experiment = self._selected()
        start = self.adapters.transfer.start
        return self._contact(self._transfer_system, start, experiment, self._sources(experiment), once=once)

    def transfer_progress(self) -> TransferProgress:
        """The transfer's progress; when it cannot be read, the last one in Error, saying why."""
        try:
            self._progress = self._contact(self._transfer_system, self.adapters.transfer.progress)
        except ServiceError as error:
            self._progress = replace(self._progress, state=TransferState.ERROR, message=f"transfer status not read: {error}")
        return self._progress

    def resume_transfer(self) -> Outcome:
        """After a restart, resume the transfer that was running before; an empty outcome when none was."""
        return Outcome(self._contact(self._transfer_system, self.adapters.transfer.resume) or "")

    def daq_start(self) -> Outcome:
        """Start continuous transfer of the selected experiment's raw and `_rec` folders."""
        return Outcome(self._transfer(once=False))

    def upload(self) -> Outcome:
        """One pass over the files present now; it ends by itself."""
        return Outcome(self._transfer(once=True))

    def daq_stop(self) -> Outcome:
        return Outcome(self._contact(self._transfer_system, self.adapters.transfer.stop))

