"""The state the supervisor owns and the PVs show, and what a handler says back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ..domain.beamtime import Beamtime, CurrentProposal, beamtime_key
from ..domain.experiment import Experiment


@dataclass(frozen=True)
class Outcome:
    """What a handler did, in a sentence for `Status`; `warning` makes it MINOR."""

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


@dataclass(frozen=True)
class Acquisition:
    """A DaqStart..DaqStop or an Upload: what it was started for (whatever is selected when it ends) and its start."""

    kind: str  # "daq", "upload"; "catalog" for the Catalog command's dataset
    experiment: Experiment
    proposal: Beamtime | None
    started: datetime | None = None
    snapshot: dict | None = None


@dataclass(frozen=True)
class BeamlineState:
    """What the PVs show, replaced whole by each handler: the event loop always reads one snapshot.

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
    metadata_last: str = ""  # JSON of the last metadata snapshots (Metadata:Last)
    acquisition: Acquisition | None = None  # the DaqStart or Upload running, until its dataset is made

    @property
    def uploading(self) -> bool:
        """An Upload runs: its end (the transfer stopped by itself) is due for a dataset."""
        return self.acquisition is not None and self.acquisition.kind == "upload"

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
