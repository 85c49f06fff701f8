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
    CurrentProposal,
    Experiment,
    InputError,
    ServiceError,
    find_beamtime,
)
from ..domain.ports import (
    Access,
    DataManagement,
    Mailer,
    SchedulingSource,
    StateStore,
    TagTarget,
    Transfer,
    TransferProgress,
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


class BeamlineCore:
    """What every use case shares: the settings, the adapters, the state the PVs show, the contacts."""

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
        storage = Path(experiment.storage_directory)
        raw = experiment.data_directory or str(self.settings.dm.data_top_dir / experiment.name)
        return {raw: str(storage / "data"), f"{raw}_rec": str(storage / "analysis")}

