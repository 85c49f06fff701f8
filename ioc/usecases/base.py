"""What the use cases share: their outcome, the adapters, the state the PVs show, the contacts."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from ..config import Settings
from ..domain.model import (
    Beamtime,
    CurrentProposal,
    Experiment,
    InputError,
    ServiceError,
    beamtime_key,
    find_beamtime,
    proposal_of,
)
from ..domain.ports import (
    Access,
    Catalogue,
    DataManagement,
    Mailer,
    MetadataSource,
    SchedulingSource,
    StateStore,
    TagTarget,
    Transfer,
    TransferProgress,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SYSTEMS = ("Scheduling", "DM", "Globus", "Email", "Catalog")  # the outside systems, each with a Health PV


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
    metadata: MetadataSource | None = None
    catalogue: Catalogue | None = None


@dataclass(frozen=True)
class BeamlineState:
    """What the PVs show, replaced whole by the use cases: the event loop always reads one snapshot.

    Two views of the proposal: `scheduled`, what the schedule says now (the `Schedule:*` PVs), and
    `shown`, what the proposal and user PVs show: the proposal of the experiment that data goes to.
    """

    scheduled: CurrentProposal | None = None  # the last refresh: the run and beamtime at now + offset
    experiment: Experiment | None = None  # the selected experiment
    proposal: Beamtime | None = None  # its proposal (a manual experiment's: the Manual:* person and title)
    selected_at: datetime | None = None
    experiments: tuple[str, ...] = ()
    emailed: tuple[str, ...] = ()
    globus_url: str = ""
    announced: str = ""  # the scheduled beamtime (key) last announced as differing from the selection
    to_follow: str = ""  # dm.follow_schedule: a new beamtime (key) whose experiment to create by itself
    metadata_last: str = ""  # JSON of the last metadata snapshots (Metadata:Last)

    @property
    def shown(self) -> CurrentProposal | None:
        """The selected experiment's proposal; before any selection, the schedule's current beamtime."""
        scheduled = self.scheduled
        if self.experiment is None or self.proposal is None:
            return scheduled
        if scheduled is None:
            return CurrentProposal(None, self.proposal, self.selected_at or datetime.now(timezone.utc))
        return CurrentProposal(scheduled.run, self.proposal, scheduled.refreshed)

    @property
    def shows_the_schedule(self) -> bool:
        """The proposal shown is the beamtime the schedule shows now (else Schedule:Differs, when one is)."""
        shown, scheduled = self.shown, self.scheduled
        if shown is None or scheduled is None or shown.beamtime is None or scheduled.beamtime is None:
            return False
        return beamtime_key(shown.beamtime) == beamtime_key(scheduled.beamtime)


class BeamlineCore:
    """What every use case shares: the settings, the adapters, the state the PVs show, the contacts."""

    def __init__(self, settings: Settings, adapters: Adapters | None, clock: Callable[[], datetime] | None = None):
        """`adapters` None: a Beamline that only describes the PVs (`--print-pvs`): no use case can run."""
        self.settings = settings
        self._adapters = adapters
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.state = BeamlineState()
        self._contacts: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()  # (system, answered)
        self._progress = TransferProgress()

    @property
    def adapters(self) -> Adapters:
        if self._adapters is None:
            raise RuntimeError("this Beamline only describes the PVs: it has no adapters")
        return self._adapters

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
            failed = error.system or system
            if failed:
                self._contacts.put((failed, False))
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
        """Read the selected experiment, its proposal, its e-mailed users and the station's list."""
        dm, state = self.adapters.dm, self.adapters.state
        name = state.selected()
        experiment = self._contact("DM", dm.get_experiment, name) if name else None
        access = self.adapters.access
        proposal = (state.proposal(name) or proposal_of(experiment)) if experiment else None
        same = self.state.experiment is not None and experiment is not None and self.state.experiment.name == name
        self._change(
            experiment=experiment,
            proposal=proposal,
            selected_at=self.state.selected_at if same else self.clock(),
            emailed=tuple(state.emailed(name)) if experiment else (),
            globus_url=access.url(experiment) if access and experiment else "",
        )
        self._change(experiments=tuple(self._contact("DM", dm.list_experiments)))

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

    def _sources(self, experiment: Experiment) -> dict[str, str]:
        """{raw folder: destination}: raw data into the first of `dm.subdirs`, `_rec` into the second."""
        storage = Path(experiment.storage_directory)
        raw = experiment.data_directory or str(self.settings.dm.data_top_dir / experiment.name)
        first, second = self.settings.dm.subdirs[:2]
        return {raw: str(storage / first), f"{raw}_rec": str(storage / second)}

    @property
    def _transfer_system(self) -> str | None:
        """The system a transfer call contacts; None for the built-in engine, which is no outside system."""
        if self.settings.dm.transfer == "globus":
            return "Globus"
        return "DM" if self.settings.dm.backend == "aps" else None
