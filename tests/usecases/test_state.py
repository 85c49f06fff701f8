"""What the supervisor reads off the handlers: the state the PVs show (`BeamlineState`), the selection read at
start, and the contacts with outside systems behind the Health PVs."""

from __future__ import annotations

import dataclasses

import pytest
from dmagic_ioc.ioc.app.messages import Create, DaqStart, Email, ReadSelection, Refresh
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import BeamlineState, Outcome
from dmagic_ioc.ioc.domain.errors import DMError, InputError

from ..fakes.ports import EXPERIMENT, NOW
from .conftest import Beamline


def restarted(beamline: Beamline, fakes) -> Beamline:
    """A new Beamline on the same fakes, as after an IOC restart."""
    return Beamline(Services(beamline.settings, fakes.ports(), clock=lambda: NOW))


def test_read_selection_with_nothing_selected_reads_the_stations_list(beamline):
    assert beamline.run(ReadSelection()) == Outcome("no experiment selected")
    assert (beamline.state.experiment, beamline.state.proposal, beamline.state.experiments) == (None, None, ())
    assert beamline.contacts() == [("DM", True)]


def test_read_selection_after_a_restart_shows_the_selected_experiment_and_who_was_emailed(created, fakes):
    created.run(Email(everyone=False))
    again = restarted(created, fakes)
    assert again.run(ReadSelection()) == Outcome(f"selected experiment: {EXPERIMENT}")
    shown = again.state
    assert shown.experiment == fakes.dm.experiments[EXPERIMENT]
    assert shown.emailed == ("d310001", "d310002", "d310009")
    assert (shown.experiments, shown.globus_url) == ((EXPERIMENT,), created.state.globus_url)
    assert shown.proposal == created.state.proposal  # the proposal PVs show it before any Refresh
    assert shown.shown.beamtime == created.state.proposal and shown.scheduled is None
    assert again.contacts() == [("DM", True), ("DM", True)]


def test_a_selection_dm_could_not_read_at_start_is_read_when_a_command_needs_it(created, fakes):
    again = restarted(created, fakes)
    real_get = fakes.dm.get_experiment

    def unreachable(name):
        raise DMError("DM service unreachable")

    fakes.dm.get_experiment = unreachable
    with pytest.raises(DMError):
        again.run(ReadSelection())
    assert again.state.experiment is None
    assert again.contacts() == [("DM", False)]

    fakes.dm.get_experiment = real_get  # DM is back: the next command reads the selection first
    assert again.run(DaqStart()) == Outcome(f"transfer of {EXPERIMENT} started")
    assert again.state.experiment.name == EXPERIMENT
    assert fakes.transfer.starts[-1][0] == EXPERIMENT


def test_contacts_are_taken_once_oldest_first(beamline):
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    taken = beamline.contacts()
    assert taken[:3] == [("Scheduling", True), ("Scheduling", True), ("DM", True)]  # the refresh, then Create's
    assert ("Globus", True) in taken[3:]
    assert beamline.contacts() == []


def test_a_service_error_is_a_contact_of_its_own_system_and_bad_input_of_none(created, fakes):
    def storage_gone(experiment, sources, *, once):
        raise DMError("the storage of the experiment is missing")

    fakes.transfer.start = storage_gone  # the built-in engine: no outside system, but the failure names DM
    with pytest.raises(DMError):
        created.run(DaqStart())
    assert created.contacts() == [("DM", False)]

    def refused(experiment, sources, *, once):
        raise InputError("the _rec folder is a symbolic link: refused")

    fakes.transfer.start = refused
    with pytest.raises(InputError):
        created.run(DaqStart())
    assert created.contacts() == []


def test_the_state_is_replaced_whole_never_changed_in_place(beamline):
    first = beamline.state
    beamline.run(Refresh(0.0))
    refreshed = beamline.state
    beamline.run(Create())
    assert first == BeamlineState()  # a reader holding a snapshot keeps a consistent one
    assert refreshed.experiment is None and refreshed.scheduled.beamtime.gup == "1012039"
    assert beamline.state.experiment.name == EXPERIMENT and beamline.state.scheduled == refreshed.scheduled
    with pytest.raises(dataclasses.FrozenInstanceError):
        beamline.state.experiment = None
