"""What several handlers need: the selected experiment, the registry's selection, a proposal's beamtime, the sources."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ...domain.beamtime import CurrentProposal, find_beamtime
from ...domain.errors import InputError
from ...domain.experiment import Experiment, proposal_of
from ..handling import Step
from ..messages import ReadSelection
from ..state import Outcome


def selected(step: Step) -> Experiment:
    """The selected experiment; InputError when none is."""
    experiment = step.state.experiment
    if experiment is None and step.services.adapters.state.selected():
        load_selection(step)  # DM was unreachable at startup: read the selection now
        experiment = step.state.experiment
    if experiment is None:
        raise InputError("no experiment is selected: use Create, CreateManual or Select first")
    return experiment


def read_selection(step: Step, command: ReadSelection) -> Outcome:
    """At start: the selected experiment, as the registry has it."""
    load_selection(step)
    name = step.state.experiment.name if step.state.experiment else ""
    return Outcome(f"selected experiment: {name}" if name else "no experiment selected")


def load_selection(step: Step) -> None:
    """Read the selected experiment, its proposal, its e-mailed users and the station's list."""
    services = step.services
    dm, store, access = services.adapters.dm, services.adapters.state, services.adapters.access
    name = store.selected()
    experiment = services.contact("DM", dm.get_experiment, name) if name else None
    proposal = (store.proposal(name) or proposal_of(experiment)) if experiment else None
    before = step.state.experiment
    same = before is not None and experiment is not None and before.name == name
    step.change(
        experiment=experiment,
        proposal=proposal,
        selected_at=step.state.selected_at if same else services.clock(),
        emailed=tuple(store.emailed(name)) if experiment else (),
        globus_url=access.url(experiment) if access and experiment else "",
    )
    step.change(experiments=tuple(services.contact("DM", dm.list_experiments)))


def beamtime_of(step: Step, gup: str, start: datetime | None) -> CurrentProposal | None:
    """The run and scheduled beamtime of proposal `gup` around `start`, if the schedule has it."""
    services = step.services
    scheduling = services.adapters.scheduling
    runs = services.contact("Scheduling", scheduling.runs)
    if start is not None:
        runs = [run for run in runs if run.contains(start)] or runs
    for run in runs:
        found = find_beamtime(services.contact("Scheduling", scheduling.beamtimes, run), gup)
        if found is not None:
            return CurrentProposal(run, found, services.clock().astimezone(services.tz))
    return None


def sources(step: Step, experiment: Experiment) -> dict[str, str]:
    """{raw folder: destination}: raw data into the first of `dm.subdirs`, `_rec` into the second."""
    settings = step.services.settings
    storage = Path(experiment.storage_directory)
    raw = experiment.data_directory or str(settings.dm.data_top_dir / experiment.name)
    first, second = settings.dm.subdirs[:2]
    return {raw: str(storage / first), f"{raw}_rec": str(storage / second)}
